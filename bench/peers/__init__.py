"""Systems the benchmark compares ours with: the asyncio yardstick and Redis."""

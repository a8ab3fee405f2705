"""The lean load harness: receivers, the open-loop sender, wire dialects, /proc."""

"""reactor-chat terminal client: ``python -m cli <server> <port> <username>``.

One job per module: ``__main__`` (arguments, exit codes, which mode),
``connection`` (socket, login handshake, reader thread), ``display`` (what may
be written to a terminal), ``completion`` (Tab completion), ``interactive``
(prompt_toolkit front end) and ``piped`` (line-by-line scripting front end).
Every command sent and every event shown goes through :mod:`protocol`.
"""

"""reactor-chat terminal client: ``python -m cli [options] <server> <port> <username>``.

One job per module: ``__main__`` (arguments, exit codes, holding the
terminal, which mode), ``connection`` (blocking socket, login handshake,
reader thread: piped mode), ``display`` (a server line in its safe wire form),
``present`` (events as sentences for people: styles, timestamps, safe text,
wrapping), ``outbox`` (matching the server's answers to our commands),
``typed`` (what the user typed, as an action), ``completion`` (Tab
completion), ``interactive`` (the prompt_toolkit front end, with reconnect)
and ``piped`` (the line-by-line scripting front end).  Every command sent and
every event shown goes through :mod:`protocol`.
"""

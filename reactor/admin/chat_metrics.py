"""The chat's metrics: its counters (:class:`~reactor.metrics.ChatStats`)
and what its state says now, read when scraped."""

from __future__ import annotations

from protocol.commands import COMMAND_NAMES, COMMANDS, Chat
from reactor.contracts import ChatForAdmin
from reactor.metrics import CLOSE_LABELS, Metric, counter, gauge

REFUSED = ("server_full", "too_many_from_address", "shutdown")
LOGIN_REFUSALS = ("invalid_name", "name_taken", "unavailable", "timed_out")


# Lines refused by the parser (unknown or malformed commands): one label,
# so that a client's words never become label values.
INVALID = "invalid"
_COMMAND_NAME = {spec.kind: spec.name for spec in COMMANDS}


def chat_metrics(chat: ChatForAdmin) -> list[Metric]:
    stats = chat.stats
    lines = {_COMMAND_NAME[kind]: count for kind, count in stats.commands.items()}
    lines[_COMMAND_NAME[Chat]] = stats.chat_lines
    lines[INVALID] = stats.invalid_lines
    here, remote = chat.user_counts()
    return [
        gauge("reactor_connections", "Client connections open (logging in, chatting or closing).",
              chat.connection_count),
        counter("reactor_connections_accepted_total",
                "Client connections admitted to the login.", stats.accepted),
        counter("reactor_connections_refused_total",
                "Client connections refused at once, by reason.",
                label="reason", values=stats.refused, known=REFUSED),
        counter("reactor_connections_closed_total",
                "Client connections ended, by reason (slow_consumer and output_budget are"
                " cut-offs for output a client did not read).",
                label="reason", values=stats.closed, known=CLOSE_LABELS),
        gauge("reactor_users_online", "Users logged in to this server.", here),
        gauge("reactor_users_remote", "Users logged in to the cluster's other servers.", remote),
        counter("reactor_logins_total", "Logins that ended with the user online.", stats.logins),
        counter("reactor_login_refusals_total", "Login attempts refused by the chat, by reason.",
                label="reason", values=stats.login_refusals, known=LOGIN_REFUSALS),
        counter("reactor_lines_total",
                "Command lines taken from logged-in users, by command (invalid: refused"
                " by the parser).",
                label="command", values=lines, known=(*COMMAND_NAMES, INVALID)),
        counter("reactor_messages_received_total", "Messages taken from users, by kind.",
                label="kind", values={"direct": stats.received_direct,
                                      "broadcast": stats.received_broadcast}),
        counter("reactor_deliveries_total",
                "Messages handed to recipients' connections (a broadcast counts once per"
                " recipient of this server), by kind.",
                label="kind", values={"direct": stats.delivered_direct,
                                      "broadcast": stats.delivered_broadcast}),
        stats.direct_handoff.metric(
            "reactor_direct_handoff_seconds",
            "Seconds from taking a direct message to its handoff: the recipient's connection"
            " took it, or the recipient's node answered."),
        counter("reactor_direct_not_delivered_total",
                "Direct messages whose sender was told they were not delivered.",
                stats.not_delivered),
        counter("reactor_flood_delays_total",
                "Times a client's next line was held back by flood control.", stats.flood_delays),
        counter("reactor_received_bytes_total", "Bytes read from clients.", stats.bytes_in),
        counter("reactor_sent_bytes_total",
                "Bytes handed to clients' connections to send.", stats.bytes_out),
        gauge("reactor_output_queued_bytes",
              "Output queued for all clients and not yet taken by the kernel.",
              chat.output_queued()),
    ]

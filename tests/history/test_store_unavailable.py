"""A history store that cannot answer (its Redis out of reach): users are told plainly, the chat goes on."""

from __future__ import annotations

from pathlib import Path

from reactor.config import HistoryConfig
from reactor.contracts import HistoryUnavailable, StoredMessage
from reactor.history.memory import MemoryHistory
from reactor.stored import UNAVAILABLE
from tests.history.support import PASSWORD, accounts_config, log_in, register
from tests.support import running_server


class FlakyStore(MemoryHistory):
    """Memory history whose reads and holds fail while ``down``."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise HistoryUnavailable("history store unreachable: connection refused")

    def page(self, *args: object) -> list[StoredMessage]:  # type: ignore[override]
        self._check()
        return super().page(*args)  # type: ignore[arg-type]

    def hold(self, *args: object) -> StoredMessage | None:  # type: ignore[override]
        self._check()
        return super().hold(*args)  # type: ignore[arg-type]

    def waiting(self, to: str) -> list[StoredMessage]:
        self._check()
        return super().waiting(to)


def test_while_the_store_is_unreachable_users_are_told_and_nothing_breaks(
        backend: str, tmp_path: Path) -> None:
    store = FlakyStore(HistoryConfig())
    with running_server(backend, accounts=accounts_config(str(tmp_path / "accounts.db")),
                        history=HistoryConfig(), options={"history": store}) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            alice.send("chat Bob before")
            alice.expect("<Message to Bob stored until they log in.>")
            store.down = True
            alice.send("chat Bob during")
            alice.expect(f"<Message to Bob not delivered: {UNAVAILABLE}.>")
            alice.send("history everyone")
            alice.expect(f"<Chat service unavailable: {UNAVAILABLE}.>")
            with log_in(server.port, "Bob", PASSWORD) as bob:  # logs in, with nothing shown
                bob.send("users")
                bob.expect("<Online users: Alice, Bob>")
            store.down = False
            alice.expect("<User Bob is online.>", "<User Bob is offline.>")
            with log_in(server.port, "Bob", PASSWORD) as bob:  # what waited is still there
                line = bob.read_line()
                assert line.startswith("<Waiting message from Alice, sent ") and \
                    line.endswith(': "before">'), line

"""Folder discovery on Dovecot (SPECIAL-USE) and pymap (no SPECIAL-USE: common names), and the pure planner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mail.conftest import imap_config
from tests.support.imap import DovecotServer, ImapServer, PymapServer, dovecot_available
from worker.mail.folders import FolderPlan, discover, plan_folders
from worker.mail.imap import ListedMailbox, open_imap


async def discovered(server: ImapServer, wanted: tuple[str, ...] | None = None) -> FolderPlan:
    async with open_imap(imap_config(server)) as session:
        return await discover(session, wanted) if wanted is not None else await discover(session)


def special_dovecot(special_use: dict[str, str]) -> Iterator[DovecotServer]:
    if not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    with DovecotServer(special_use=special_use).start() as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def german_dovecot() -> Iterator[DovecotServer]:
    yield from special_dovecot({"Gesendet": "\\Sent", "Ablage": "\\Archive", "Papierkorb": "\\Trash"})


@pytest.fixture
def gmail_dovecot() -> Iterator[DovecotServer]:
    yield from special_dovecot(
        {"[Gmail]/Alle Nachrichten": "\\All", "[Gmail]/Gesendet": "\\Sent", "[Gmail]/Papierkorb": "\\Trash"}
    )


async def test_special_use_beats_common_names_and_unselectable_folders_are_skipped(
    german_dovecot: DovecotServer,
) -> None:
    german_dovecot.command(
        'CREATE "Gesendet"', 'CREATE "Ablage"', 'CREATE "Papierkorb"', 'CREATE "Sent"', 'CREATE "Par/Child"'
    )
    plan = await discovered(german_dovecot, ("INBOX", "\\Sent", "\\Archive", "Par", "Par/Child", "Nope"))
    assert plan.sync == ["INBOX", "Gesendet", "Ablage", "Par/Child"]  # not the decoy "Sent"
    assert plan.role("\\sent") == "Gesendet" and plan.role("\\Trash") == "Papierkorb"
    assert "Par" in plan.skipped and "Noselect" in plan.skipped["Par"]
    assert plan.skipped["Nope"] == "not listed by the server"
    [parent] = [b for b in plan.mailboxes if b.name == "Par"]
    assert parent.attributes & {"\\NonExistent", "\\Noselect"}  # Dovecot: \NonExistent with LIST-EXTENDED


async def test_gmail_style_all_mail_is_not_synced_twice_against_labels(gmail_dovecot: DovecotServer) -> None:
    gmail_dovecot.command(
        'CREATE "[Gmail]/Alle Nachrichten"', 'CREATE "[Gmail]/Gesendet"', 'CREATE "[Gmail]/Papierkorb"', 'CREATE "Work"'
    )
    plan = await discovered(gmail_dovecot)  # INBOX, \Sent, \Archive (-> \All: Gmail archives into All Mail)
    assert plan.sync == ["[Gmail]/Alle Nachrichten"]
    assert "INBOX" in plan.skipped and "[Gmail]/Gesendet" in plan.skipped
    assert plan.role("\\Sent") == "[Gmail]/Gesendet"  # still found, e.g. for the Sent-folder lookup
    with_trash = await discovered(gmail_dovecot, ("\\Archive", "Work", "\\Trash"))
    assert with_trash.sync == ["[Gmail]/Alle Nachrichten", "[Gmail]/Papierkorb"]  # Trash is not in All Mail
    inbox_only = await discovered(gmail_dovecot, ("INBOX",))
    assert inbox_only.sync == ["INBOX"]  # only All Mail makes labels redundant


@pytest.fixture
def pymap_server() -> Iterator[PymapServer]:
    with PymapServer().start() as server:
        yield server  # type: ignore[misc]


async def test_without_special_use_common_names_and_changes_show_on_the_next_discovery(
    pymap_server: PymapServer,
) -> None:
    first = await discovered(pymap_server)
    assert first.sync == ["INBOX"] and set(first.skipped) == {"\\Sent", "\\Archive"}
    pymap_server.command('CREATE "Sent Items"', 'CREATE "Archives"', 'CREATE "Entw&APw-rfe"')
    second = await discovered(pymap_server, ("INBOX", "\\Sent", "\\Archive", "\\Drafts"))
    assert second.sync == ["INBOX", "Sent Items", "Archives", "Entwürfe"]  # modified UTF-7 decoded
    pymap_server.command('RENAME "Sent Items" "Sent Messages"', 'DELETE "Archives"')
    third = await discovered(pymap_server)
    assert third.sync == ["INBOX", "Sent Messages"] and "\\Archive" in third.skipped


def box(name: str, *attributes: str, delimiter: str = "/") -> ListedMailbox:
    return ListedMailbox(name, delimiter, frozenset(attributes))


def test_planner_names_nested_under_inbox_and_nonexistent() -> None:
    boxes = [box("inbox"), box("INBOX.Sent", delimiter="."), box("Old", "\\NonExistent", "\\Archive"), box("Archiv")]
    plan = plan_folders(boxes)
    assert plan.sync == ["inbox", "INBOX.Sent", "Archiv"]  # \NonExistent never chosen, even with its role
    assert plan_folders(boxes, ("Old",)).skipped == {"Old": "not selectable (\\Noselect or \\NonExistent)"}

"""Folder discovery: which mailboxes of an account to sync, found with LIST and SPECIAL-USE (RFC 6154).

An account's folder list (`Account.mailboxes`) holds mailbox names and *roles*. A role is written as its
RFC 6154 attribute (`\\Sent`, `\\Archive`, `\\Drafts`, `\\Trash`, `\\Junk`, `\\All`, `\\Flagged`); the default
list is `INBOX`, `\\Sent`, `\\Archive`. Each discovery (one LIST per sync round, so created, renamed and
deleted folders are picked up the next time) resolves it:

- a role is the mailbox carrying that attribute; without one (servers without SPECIAL-USE), the first
  mailbox whose name, or last hierarchy level, is a common name for it (`Sent Items`, `INBOX.Sent`, ...);
  `\\Archive` falls back to `\\All` when the server has an All Mail folder but no archive (Gmail archives by
  removing the Inbox label);
- a name is used when the server lists it; `INBOX` always matches case-insensitively;
- `\\Noselect` and `\\NonExistent` mailboxes are never synced;
- Gmail-style servers (a mailbox with `\\All`): when All Mail is synced, every other selected mailbox but
  Trash and Junk is a label view of the same messages, so it is left out instead of being synced twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from worker.mail.imap import ImapSession, ListedMailbox

DEFAULT_FOLDERS = ("INBOX", "\\Sent", "\\Archive")
ROLES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
UNSELECTABLE = frozenset({"\\noselect", "\\nonexistent"})
NOT_IN_ALL = frozenset({"\\Trash", "\\Junk"})  # what Gmail's All Mail does not contain
# Common names of each role on servers without SPECIAL-USE (compared case-insensitively, first match wins).
FALLBACK_NAMES: dict[str, tuple[str, ...]] = {
    "\\Sent": (
        "Sent",
        "Sent Items",
        "Sent Messages",
        "Sent Mail",
        "Sent-Mail",
        "Gesendet",
        "Gesendete Elemente",
        "Gesendete Objekte",
        "Envoyés",
        "Éléments envoyés",
        "Enviados",
        "Elementos enviados",
        "Inviata",
        "Posta inviata",
        "Verzonden",
        "Verzonden items",
        "Отправленные",
    ),
    "\\Archive": ("Archive", "Archives", "Archiv", "Archivo", "Archief", "Archivio", "Arquivo", "Архив"),
    "\\Drafts": ("Drafts", "Draft", "Entwürfe", "Brouillons", "Borradores", "Bozze", "Concepten", "Черновики"),
    "\\Trash": (
        "Trash",
        "Deleted Items",
        "Deleted Messages",
        "Deleted",
        "Bin",
        "Papierkorb",
        "Gelöschte Elemente",
        "Corbeille",
        "Papelera",
        "Cestino",
        "Prullenbak",
        "Корзина",
    ),
    "\\Junk": ("Junk", "Spam", "Junk E-mail", "Junk Email", "Bulk Mail", "Courrier indésirable", "Спам"),
    "\\All": ("All Mail", "[Gmail]/All Mail", "[Google Mail]/All Mail"),
    "\\Flagged": ("Flagged", "Starred"),
}


@dataclass(frozen=True)
class FolderPlan:
    """The outcome of one discovery: what to sync, and why the rest was left out."""

    sync: list[str]
    roles: dict[str, str] = field(default_factory=dict)  # role -> mailbox, for every role the server has
    skipped: dict[str, str] = field(default_factory=dict)  # wanted entry or mailbox -> reason
    mailboxes: list[ListedMailbox] = field(default_factory=list)  # everything LIST returned

    def role(self, role: str) -> str | None:
        """The mailbox of a role (e.g. `\\Sent` for the Sent-folder lookup), or None."""
        return self.roles.get(normalise_role(role) or "")


def normalise_role(entry: str) -> str | None:
    """The canonical spelling of a role entry (`\\sent` -> `\\Sent`), or None when `entry` is a name."""
    if not entry.startswith("\\"):
        return None
    for role in ROLES:
        if role.lower() == entry.lower():
            return role
    return None


def _leaf(box: ListedMailbox) -> str:
    if box.delimiter and box.delimiter in box.name:
        return box.name.rsplit(box.delimiter, 1)[1]
    return box.name


def _selectable(box: ListedMailbox) -> bool:
    return not {a.lower() for a in box.attributes} & UNSELECTABLE


def find_roles(mailboxes: Iterable[ListedMailbox]) -> dict[str, str]:
    """Role -> mailbox: SPECIAL-USE attributes first, then common names, among selectable mailboxes."""
    boxes = [b for b in mailboxes if _selectable(b)]
    roles: dict[str, str] = {}
    for role in ROLES:
        marked = [b.name for b in boxes if role.lower() in {a.lower() for a in b.attributes}]
        if marked:
            roles[role] = marked[0]
    taken = set(roles.values())
    for role, names in FALLBACK_NAMES.items():
        if role in roles:
            continue
        for wanted in names:
            hit = next(
                (b.name for b in boxes if b.name not in taken and wanted.lower() in (b.name.lower(), _leaf(b).lower())),
                None,
            )
            if hit is not None:
                roles[role] = hit
                taken.add(hit)
                break
    if "\\Archive" not in roles and "\\All" in roles:
        roles["\\Archive"] = roles["\\All"]
    return roles


def plan_folders(mailboxes: Sequence[ListedMailbox], wanted: Sequence[str] = DEFAULT_FOLDERS) -> FolderPlan:
    """Resolve the wanted names and roles against what LIST returned (pure: no I/O)."""
    roles = find_roles(mailboxes)
    by_name = {b.name: b for b in mailboxes}
    by_lower_inbox = next((b for b in mailboxes if b.name.upper() == "INBOX"), None)
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for entry in wanted:
        role = normalise_role(entry)
        if role is not None:
            name = roles.get(role)
            if name is None:
                skipped[entry] = "no such folder on this server"
                continue
        else:
            box = by_lower_inbox if entry.upper() == "INBOX" else by_name.get(entry)
            if box is None:
                skipped[entry] = "not listed by the server"
                continue
            if not _selectable(box):
                skipped[entry] = "not selectable (\\Noselect or \\NonExistent)"
                continue
            name = box.name
        if name not in chosen:
            chosen.append(name)
    all_mail = roles.get("\\All")
    if all_mail is not None and all_mail in chosen:
        keep = {all_mail} | {roles[r] for r in NOT_IN_ALL if r in roles}
        for name in [n for n in chosen if n not in keep]:
            chosen.remove(name)
            skipped[name] = f"its messages are in {all_mail} (Gmail-style labels), synced once there"
    return FolderPlan(sync=chosen, roles=roles, skipped=skipped, mailboxes=list(mailboxes))


async def discover(session: ImapSession, wanted: Sequence[str] = DEFAULT_FOLDERS) -> FolderPlan:
    """LIST the account's mailboxes and resolve `wanted` (names and roles) against them."""
    return plan_folders(await session.list_mailboxes(), wanted)

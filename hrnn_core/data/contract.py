"""The data contract (../shared/PROTOCOLS.md section 1), as constants the rest of the code uses.

Files in the contract are CSV (header row, comma-separated, UTF-8) or Parquet, one file per
table. Adapters (``hrnn_core.data.datasets``) convert other formats into contract files; ingest
(``hrnn_core.data.ingest``) reads only contract files.
"""

from __future__ import annotations

from hrnn_core.errors import HrnnError

TABLES = ("interactions", "users", "items")

# interactions: the columns with a fixed meaning; any other column is request context.
INTERACTION_COLUMNS = (
    "user_id",  # string; required unless session_id is given (anonymous logs)
    "item_id",  # string; required
    "timestamp",  # int epoch seconds, float seconds, or ISO-8601; required
    "event_type",  # string; optional (default one type)
    "event_value",  # float; optional feedback value (rating, price, dwell time)
    "session_id",  # string; optional, else sessions are inferred from inactivity gaps
    "impression",  # string "a|b|c"; optional, items shown at that request
)
INTERACTION_REQUIRED = ("item_id", "timestamp")  # plus one of user_id / session_id

USER_REQUIRED = ("user_id",)
ITEM_REQUIRED = ("item_id",)
ITEM_CREATION_COLUMN = "creation_timestamp"

MULTI_VALUE_SEPARATOR = "|"  # separates values of multi-valued categorical columns and impressions

# The sequence owner of an interaction: its user_id, else its session_id behind this prefix (an
# anonymous session is an owner of its own). The one home of the rule: SQL files get the prefix
# as the bound parameter $session_prefix (hrnn_core.data.warehouse.run_sql passes it to every file).
SESSION_OWNER_PREFIX = "~session:"


class MissingOwnerError(HrnnError, ValueError):
    """An interaction with neither a user_id nor a session_id has no owner."""


def owner_id(user_id: str | None, session_id: str | None) -> str:
    """The sequence owner the warehouse derives: the user, else ``SESSION_OWNER_PREFIX + session``."""
    if user_id:
        return user_id
    if session_id:
        return SESSION_OWNER_PREFIX + session_id
    raise MissingOwnerError("an event needs a user_id or a session_id")


def is_session_owner(owner: str) -> bool:
    """True for an anonymous session's owner id (not a user: no user features, no id embedding)."""
    return owner.startswith(SESSION_OWNER_PREFIX)


# The uniqueness key of an interaction (duplicates on it are reported, loaded once).
INTERACTION_KEY = ("user_id", "session_id", "item_id", "timestamp", "event_type")

# Quarantine reasons: stable strings, used in reports and tests.
REASON_MISSING_USER = "missing user_id and session_id"
REASON_MISSING_ITEM = "missing item_id"
REASON_MISSING_USER_ID = "missing user_id"  # users table
REASON_MISSING_TS = "missing timestamp"
REASON_BAD_TS = "unparseable timestamp"
REASON_TS_RANGE = "timestamp out of range"
REASON_BAD_VALUE = "event_value not a number"
REASON_NONFINITE_VALUE = "event_value not finite"
REASON_ID_TOO_LONG = "id too long"
REASON_MALFORMED = "malformed row"
REASON_BAD_NUMERIC = "non-numeric value in numeric column"
REASON_DUPLICATE_KEY = "duplicate key with different attributes"

"""The token store: only hashes on disk, roles ordered, file and directory modes enforced."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridpilot.api.auth import Authenticator
from gridpilot.api.tokens import Role, TokenError, TokenStore, TokenStoreError

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o700)
    return TokenStore(directory / "tokens.json")


def test_the_file_holds_a_hash_never_the_token(store: TokenStore) -> None:
    record, token = store.create(Role.OPERATOR, "scada", created_by="test")
    assert token.startswith(f"gpt_{record.id}_")
    data = store.path.read_text()
    assert token not in data
    assert token.split("_", 2)[2] not in data
    assert json.loads(data)["tokens"][0]["secret_sha256"] == record.secret_sha256
    assert os.stat(store.path).st_mode & 0o777 == 0o600


def test_verify_accepts_only_the_exact_active_token(store: TokenStore) -> None:
    record, token = store.create(Role.VIEWER, "grafana", created_by="test")
    assert store.verify(token) == record
    assert store.verify(token + "x") is None
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify(f"gpt_{record.id}_" + "x" * 43) is None  # right id, wrong secret
    assert store.verify("gpt_00000000_" + "x" * 43) is None  # unknown id
    assert store.verify("") is None
    assert store.verify("Bearer " + token) is None


def test_revoked_and_expired_tokens_stop_working(store: TokenStore) -> None:
    _, kept = store.create(Role.VIEWER, "kept", created_by="test")
    revoked, token = store.create(Role.VIEWER, "revoked", created_by="test")
    store.revoke(revoked.id)
    assert store.verify(token) is None
    assert store.verify(kept) is not None
    # revoked ones stay listed (the audit log names their ids)
    assert {r.name for r in store.records()} == {"kept", "revoked"}

    _, expiring = store.create(
        Role.ADMIN, "temp", created_by="test", expires=T0 + timedelta(hours=1), now=T0
    )
    assert store.verify(expiring, now=T0 + timedelta(minutes=59)) is not None
    assert store.verify(expiring, now=T0 + timedelta(hours=1)) is None


def test_a_second_store_on_the_same_file_sees_changes(store: TokenStore) -> None:
    """The CLI and the API are different processes: what one writes the other reads."""
    api_side = TokenStore(store.path)
    assert api_side.records() == []
    record, token = store.create(Role.OPERATOR, "new", created_by="cli")
    assert api_side.verify(token) == record
    store.revoke(record.id)
    assert api_side.verify(token) is None


@pytest.mark.parametrize(
    ("name", "expires"),
    [("", None), ("   ", None), ("x" * 101, None), ("ok", T0 - timedelta(seconds=1))],
)
def test_bad_arguments_are_refused(store: TokenStore, name: str, expires: datetime | None) -> None:
    with pytest.raises(TokenError):
        store.create(Role.VIEWER, name, created_by="test", expires=expires, now=T0)


def test_unprintable_name_characters_become_question_marks(store: TokenStore) -> None:
    record, token = store.create(Role.VIEWER, " tab\there \udac8\x1b ", created_by="test")
    assert record.name == "tab?here ??"
    assert store.verify(token) == record  # stored and read back as UTF-8


def test_revoking_an_unknown_id_says_how_to_find_ids(store: TokenStore) -> None:
    with pytest.raises(TokenError, match="gridpilot token list"):
        store.revoke("deadbeef")


def test_a_file_others_can_read_is_refused(store: TokenStore) -> None:
    _, token = store.create(Role.VIEWER, "v", created_by="test")
    store.path.chmod(0o644)
    with pytest.raises(TokenStoreError, match=r"mode 0644.*chmod 600"):
        store.verify(token)


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(TokenStoreError, match="writable by others"):
        TokenStore(shared / "tokens.json").create(Role.VIEWER, "v", created_by="test")


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"tokens": [{"id": 1}]}'])
def test_a_malformed_file_is_refused_with_advice(store: TokenStore, content: bytes) -> None:
    store.path.write_bytes(content)
    store.path.chmod(0o600)
    with pytest.raises(TokenStoreError, match="not a GridPilot token store"):
        store.records()


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.VIEWER)
    assert Role.VIEWER.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)


def test_rate_limit_is_a_token_bucket_per_token(store: TokenStore) -> None:
    now = [0.0]
    auth = Authenticator(store, rate_per_minute=60, burst=3, monotonic=lambda: now[0])
    _, a = store.create(Role.VIEWER, "a", created_by="test")
    _, b = store.create(Role.VIEWER, "b", created_by="test")
    alice = auth.authenticate(f"Bearer {a}")
    bob = auth.authenticate(f"bearer {b}")
    assert alice is not None
    assert bob is not None
    assert [auth.retry_after_s(alice) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert auth.retry_after_s(alice) == pytest.approx(1.0)  # 1 request/s refills
    assert auth.retry_after_s(bob) == 0.0  # another token has its own bucket
    now[0] = 1.0
    assert auth.retry_after_s(alice) == 0.0
    assert auth.authenticate(f"Basic {a}") is None
    assert auth.authenticate(None) is None


def test_refusal_says_why_a_token_may_no_longer_stream(store: TokenStore) -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    live, _ = store.create(Role.VIEWER, "live", created_by="t", now=now)
    brief, _ = store.create(
        Role.VIEWER, "brief", created_by="t", expires=now + timedelta(hours=1), now=now
    )
    assert store.refusal(live.id, now) is None
    assert store.refusal(brief.id, now) is None
    assert store.refusal(brief.id, now + timedelta(hours=1)) == f"token {brief.id} expired"
    store.revoke(live.id, now)
    assert store.refusal(live.id, now) == f"token {live.id} was revoked"
    assert store.refusal("nosuchid", now) == "token nosuchid no longer exists"
    store.path.chmod(0o644)  # a store that cannot be trusted ends streams too
    assert (store.refusal(brief.id, now) or "").startswith("tokens cannot be checked")

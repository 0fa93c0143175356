"""Key fields in the store on both databases (docs/contract.md#keys): expiry, tokens of revoked or expired keys,
the key's limits carried by its principal."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sttgate.store import Store
from sttgate.store import auth as auth_module
from sttgate.store.accounts import KeyOptions


async def test_expiry_revocation_and_the_fields_a_principal_carries(store: Store, monkeypatch) -> None:
    acct = await store.create_account(name="a")
    key = await store.create_key(
        acct.id, KeyOptions(name="k", expires_in_seconds=60, max_streams=1, providers=("deepgram", "assemblyai"))
    )
    principal = await store.authenticate(key.key)
    assert principal is not None
    assert (principal.key_id, principal.key_max_streams, principal.key_providers) == (
        key.id,
        1,
        ("deepgram", "assemblyai"),
    )
    assert principal.allows("assemblyai") and not principal.allows("elevenlabs")

    minted = await store.mint_token(acct.id, 600, key_id=key.id)
    kept = await store.mint_token(acct.id, 600, key_id=key.id)
    redeemed = await store.redeem_token(minted.token, "deepgram")
    assert redeemed is not None and (redeemed.key_max_streams, redeemed.key_providers) == (
        1,
        ("deepgram", "assemblyai"),
    )

    later = auth_module.utcnow() + timedelta(seconds=60)
    monkeypatch.setattr(auth_module, "utcnow", lambda: later)
    assert await store.authenticate(key.key) is None  # expired: like a revoked key
    assert await store.redeem_token(kept.token, "deepgram") is None  # its tokens outlive nothing
    monkeypatch.undo()
    assert await store.redeem_token(kept.token, "deepgram") is not None  # refused above, not spent

    other = await store.create_key(acct.id)
    token = await store.mint_token(acct.id, 600, key_id=other.id)
    await store.revoke_key(other.id)
    assert await store.redeem_token(token.token, "assemblyai") is None
    (listed,) = [k for k in await store.list_keys(acct.id) if k.id == key.id]
    assert (listed.name, listed.max_streams, listed.providers, listed.expires_at) == (
        "k",
        1,
        ("deepgram", "assemblyai"),
        key.expires_at,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (KeyOptions(providers=("assemblyai", "ibm")), "unknown provider 'ibm'"),
        (KeyOptions(providers=()), "at least one provider"),
        (KeyOptions(expires_in_seconds=0), "lifetime"),
        (KeyOptions(max_streams=-1), "max streams"),
        (KeyOptions(name="  "), "name"),
    ],
)
async def test_bad_key_options_are_refused(store: Store, options: KeyOptions, message: str) -> None:
    acct = await store.create_account(name="a")
    with pytest.raises(ValueError, match=message):
        await store.create_key(acct.id, options)
    assert await store.list_keys(acct.id) == []

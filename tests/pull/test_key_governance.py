"""Per-key governance in pull mode (docs/contract.md#keys): the provider allow-list and the key's own stream limit,
which counts pull tasks and push sessions alike."""

from __future__ import annotations

from sttgate.store.accounts import KeyOptions
from tests.pull.test_api import body, error
from tests.support.upgrade import raw_upgrade


async def test_a_key_limited_to_assemblyai_cannot_pull_from_elevenlabs(pull_gateway, account, store) -> None:
    gw = await pull_gateway()
    acct = await account()
    key = (await store.create_key(acct.id, KeyOptions(providers=("assemblyai",)))).key
    status, answer = await gw.start(key, body(provider="elevenlabs"))
    assert (status, error(answer)) == (403, "provider_not_allowed")
    assert gw.recorder.find(provider="elevenlabs") == []


async def test_a_keys_max_streams_counts_its_pull_tasks(pull_gateway, account, store, receiver, media_server) -> None:
    gw = await pull_gateway()
    acct = await account(max_streams=5)
    key = (await store.create_key(acct.id, KeyOptions(max_streams=1))).key
    _, hook = receiver
    status, answer = await gw.start(key, body(audio_url=f"{media_server}/tone60.wav", callback_url=hook))
    assert status == 200, answer
    task_id = answer["data"]["task_id"]
    try:
        status, answer = await gw.start(key, body(audio_url=f"{media_server}/tone60.wav", callback_url=hook))
        assert (status, error(answer)) == (429, "too_many_streams")
        port = gw.running.port
        pushed = await raw_upgrade(port, f"provider=assemblyai&api_key={key}&sample_rate=16000")
        assert (pushed.status, pushed.body["error"]["code"]) == (429, "too_many_streams")
        # The account's other keys are not held by this one's limit.
        other = await raw_upgrade(port, f"provider=assemblyai&api_key={acct.key}&sample_rate=16000")
        assert other.status == 101, other.body
        await other.close(1000)
    finally:
        assert (await gw.stop(key, task_id))[0] == 200
        assert (await gw.wait_status(key, task_id))["status"] == "stopped"


async def test_a_task_ends_budget_exceeded_at_its_next_cycle_past_the_budget(
    pull_gateway, account, store, receiver, media_server
) -> None:
    """docs/billing.md#budgets: a pull task's next cycle past the month's budget is not sent; the task ends
    ``budget_exceeded`` after a graceful provider end (4002 ``budget exceeded``)."""
    gw = await pull_gateway(account_refresh_seconds=0.05)
    acct = await account()
    await store.update_account(acct.id, monthly_budget_nanos=208_333)  # one AssemblyAI cycle
    _, hook = receiver
    status, answer = await gw.start(acct.key, body(audio_url=f"{media_server}/tone60.wav", callback_url=hook))
    assert status == 200, answer
    ended = await gw.wait_status(acct.key, answer["data"]["task_id"], timeout=30)
    assert ended["status"] == "budget_exceeded", ended
    assert ended["billed_seconds"] == 5
    (session,) = (await store.usage(acct.id)).sessions
    assert (session.cycles, session.close_code) == (1, 4002)

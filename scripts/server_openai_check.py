"""Drives a running `gpt2q serve` with the official `openai` Python package: completions and chat,
streamed and not, the model list, and the errors the package raises for a bad key and a bad
request. Run by scripts/test-server-openai.sh:

    python server_openai_check.py BASE_URL API_KEY

Prints one line per check and a closing "N passed, N failed" line; exits 1 if any failed.
"""

import sys

import openai


def main(base_url: str, key: str) -> int:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    assert client.models.retrieve(model).id == model
    checks = []

    def check(name):
        def register(fn):
            checks.append((name, fn))
            return fn

        return register

    @check("completions, greedy, same text streamed and not")
    def _():
        args = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
        whole = client.completions.create(**args)
        assert whole.object == "text_completion", whole
        assert whole.usage.completion_tokens >= 1, whole.usage
        assert whole.choices[0].finish_reason in ("stop", "length")
        parts = [c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices]
        assert "".join(parts) == whole.choices[0].text, (parts, whole.choices[0].text)

    @check("completions: seed reproduces, stop, logprobs")
    def _():
        args = dict(model=model, prompt="The sea", max_tokens=10, temperature=1.0, seed=5)
        a = client.completions.create(**args).choices[0].text
        b = client.completions.create(**args).choices[0].text
        assert a == b, (a, b)
        stopped = client.completions.create(model=model, prompt="The sea", max_tokens=40,
                                            temperature=0, stop=["\n", " the"])
        assert "\n" not in stopped.choices[0].text and " the" not in stopped.choices[0].text
        lp = client.completions.create(model=model, prompt="The sea", max_tokens=3, temperature=0,
                                       logprobs=2).choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1, lp
        assert all(x <= 0 for x in lp.token_logprobs), lp

    @check("chat, streamed and not, with usage")
    def _():
        messages = [{"role": "user", "content": "Hello, how are you?"}]
        whole = client.chat.completions.create(model=model, messages=messages, max_tokens=10,
                                               temperature=0)
        message = whole.choices[0].message
        assert message.role == "assistant", message
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=model, messages=messages, max_tokens=10, temperature=0, stream=True,
                stream_options={"include_usage": True})
            if c.choices
        )
        assert text == message.content, (text, message.content)

    @check("a wrong key raises AuthenticationError")
    def _():
        bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        try:
            bad.models.list()
        except openai.AuthenticationError:
            return
        raise AssertionError("no error")

    @check("an unknown model raises NotFoundError, a bad value BadRequestError")
    def _():
        try:
            client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
            raise AssertionError("no error for an unknown model")
        except openai.NotFoundError:
            pass
        try:
            client.completions.create(model=model, prompt="x", max_tokens=1, temperature=7)
            raise AssertionError("no error for temperature 7")
        except openai.BadRequestError as e:
            assert "temperature" in str(e), e

    failed = 0
    for name, fn in checks:
        try:
            fn()
            print(f"ok     {name}")
        except Exception as e:  # noqa: BLE001 - report every failure, then the total
            failed += 1
            print(f"FAILED {name}: {type(e).__name__}: {e}")
    print(f"openai: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

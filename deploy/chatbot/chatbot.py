"""Example chatbot: the unmodified anthropic SDK, pointed at the sidecar by ANTHROPIC_BASE_URL.

    ANTHROPIC_BASE_URL=http://127.0.0.1:8080 python chatbot.py "How do I read a CSV file?"
    python chatbot.py                       # reads questions from stdin, one per line
    CHATBOT_INTERVAL_S=30 python chatbot.py --demo   # asks a built-in question every 30 s (compose/k8s)

The sidecar answers like Anthropic and says how in headers: X-RAG-Mode (full | fallback_model |
unavailable), X-RAG-Degraded, X-RAG-Degradations. The bot prints them with each answer, so a degraded
answer is visible to whoever runs it. Errors from the sidecar (503 when every model is down) are
printed, never retried here: the sidecar already did.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence

import anthropic

DEMO_QUESTIONS = ("How do I read a CSV file with a header row?", "What does functools.lru_cache do?",
                  "How do I make a temporary directory that is removed afterwards?")


def client_from_env() -> anthropic.Anthropic:
    # max_retries=0: the sidecar owns retries, breakers and failover; the SDK's own would multiply them.
    return anthropic.Anthropic(base_url=os.environ.get("ANTHROPIC_BASE_URL", "http://127.0.0.1:8080"),
                               api_key=os.environ.get("ANTHROPIC_API_KEY", "sk-ant-placeholder"),
                               max_retries=0, timeout=float(os.environ.get("CHATBOT_TIMEOUT_S", "60")))


def ask(client: anthropic.Anthropic, question: str, model: str | None = None) -> dict[str, str]:
    """One question → {answer, mode, degraded, degradations} (the sidecar's headers)."""
    raw = client.messages.with_raw_response.create(
        model=model or os.environ.get("CHATBOT_MODEL", "claude-sonnet-4-6"), max_tokens=400,
        messages=[{"role": "user", "content": question}])
    msg = raw.parse()
    text = "".join(block.text for block in msg.content if block.type == "text")
    return {"answer": text, "mode": raw.headers.get("x-rag-mode", "?"),
            "degraded": raw.headers.get("x-rag-degraded", "?"),
            "degradations": raw.headers.get("x-rag-degradations", "")}


def run(questions: Iterable[str], client: anthropic.Anthropic | None = None, out=sys.stdout) -> int:
    """Ask each question; 0 if every one was answered, 1 otherwise."""
    client = client or client_from_env()
    failed = 0
    for q in questions:
        q = q.strip()
        if not q:
            continue
        try:
            r = ask(client, q)
        except anthropic.APIError as exc:
            failed += 1
            print(f"Q: {q}\n! the sidecar could not answer: {exc}", file=out, flush=True)
            continue
        note = f" [{r['degradations']}]" if r["degraded"] == "true" else ""
        print(f"Q: {q}\nA: {r['answer']}\n(mode={r['mode']} degraded={r['degraded']}{note})", file=out, flush=True)
    return 1 if failed else 0


def demo(interval_s: float) -> int:
    n = 0
    while True:
        run([DEMO_QUESTIONS[n % len(DEMO_QUESTIONS)]])
        n += 1
        time.sleep(interval_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--demo"]:
        return demo(float(os.environ.get("CHATBOT_INTERVAL_S", "30")))
    return run(args if args else sys.stdin)


if __name__ == "__main__":
    sys.exit(main())

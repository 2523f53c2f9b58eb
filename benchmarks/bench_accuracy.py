"""Rules extractor accuracy: python benchmarks/bench_accuracy.py [--conversations N] [--seed S].

Generates N labelled supplier threads (scanner.demo: several carriers, forwarded chains, quoted
replies, HTML-only and multipart mail, numbers split by spaces or dashes, and hard negatives:
invoice numbers with a carrier's shape but a wrong check digit, phone numbers, PO, order and
account numbers), writes them as an .mbox, reads them back with scanner.mailbox.read_threads
and runs scanner.rules.extract on each thread. Prints precision and recall of tracking numbers,
carrier accuracy of the numbers found, supplier accuracy, and the errors (--show).

The issue requires precision >= 0.99 and recall >= 0.98 with the right carrier for each.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanner import demo, rules  # noqa: E402 (needs the sys.path line above)
from scanner.mailbox import read_threads  # noqa: E402

_LEGAL = re.compile(r"\b(inc|llc|ltd|co|corp|gmbh)\b\.?", re.IGNORECASE)


def same_company(found: str, expected: str) -> bool:
    """Equal but for case, punctuation and a legal suffix ("Acme Fasteners" = "... Inc.")."""

    def key(name: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9 ]", " ", _LEGAL.sub("", name).lower()).split())

    return bool(found) and key(found) == key(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=10, help="errors to print")
    args = parser.parse_args()

    made = demo.generate(args.conversations, args.seed)
    labels = {thread.root_id: thread for thread in made}
    with tempfile.TemporaryDirectory() as folder:
        path = demo.write_mbox(Path(folder) / "inbox.mbox", made)
        started = time.perf_counter()
        true_pos = false_pos = false_neg = right_carrier = right_supplier = threads = 0
        per_carrier: Counter[str] = Counter()
        found_per_carrier: Counter[str] = Counter()
        errors: list[str] = []
        for thread in read_threads(path):
            threads += 1
            expected_thread = labels[thread.root_id]
            extraction = rules.extract(
                [(m.subject, m.text) for m in thread.messages],
                senders=[(m.sender_name, m.sender_address) for m in thread.messages],
                sent_at=[m.sent_at for m in thread.messages],
            )
            found = {s["tracking_number"]: s["carrier"] for s in extraction.shipments}
            expected = dict(expected_thread.shipments)
            for number, carrier in expected.items():
                per_carrier[carrier] += 1
                if number not in found:
                    false_neg += 1
                    errors.append(f"missed     {number} ({carrier}) in {thread.root_id}")
            for number, carrier in found.items():
                if number not in expected:
                    false_pos += 1
                    errors.append(f"false pos. {number} ({carrier}) in {thread.root_id}")
                    continue
                true_pos += 1
                found_per_carrier[expected[number]] += 1
                if carrier == expected[number]:
                    right_carrier += 1
                else:
                    errors.append(
                        f"carrier    {number}: {carrier}, not {expected[number]}"
                        f" in {thread.root_id}"
                    )
            right_supplier += same_company(extraction.supplier, expected_thread.supplier)
        elapsed = time.perf_counter() - started

    messages = sum(len(thread.messages) for thread in made)
    without = sum(1 for thread in made if not thread.shipments)
    precision = true_pos / max(1, true_pos + false_pos)
    recall = true_pos / max(1, true_pos + false_neg)
    print(
        f"{threads:,} threads ({messages:,} messages, {without:,} without tracking), "
        f"seed {args.seed}: {true_pos + false_neg:,} tracking numbers"
    )
    print(f"precision {precision:.4f} ({false_pos} false positives)")
    print(f"recall    {recall:.4f} ({false_neg} missed)")
    print(f"carrier   {right_carrier / max(1, true_pos):.4f} of the numbers found")
    print(f"supplier  {right_supplier / max(1, threads):.4f} of the threads")
    print(
        "recall by carrier: "
        + ", ".join(
            f"{c} {found_per_carrier[c] / per_carrier[c]:.3f} of {per_carrier[c]}"
            for c in sorted(per_carrier)
        )
    )
    print(f"read + extract: {elapsed:.2f} s, {threads / elapsed:,.0f} threads/s")
    for line in errors[: args.show]:
        print("  " + line)


if __name__ == "__main__":
    main()

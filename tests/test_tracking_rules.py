"""The rules extractor: carrier check digits, tracking numbers in real-looking mail, PO numbers.

The check-digit algorithms come from the tracking-numbers package; the reference functions
here restate each carrier's published algorithm independently, so a wrong table shows up.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from scanner import rules
from scanner.demo import _Maker
from scanner.rules import check, extract, find_po_numbers, find_tracking_numbers


def ups_reference(number: str) -> bool:
    """UPS: the 15 characters after 1Z, letters as (code - 3) mod 10, odd positions doubled."""
    values = [int(c) if c.isdigit() else (ord(c) - 3) % 10 for c in number[2:17]]
    total = sum(v * (2 if i % 2 else 1) for i, v in enumerate(values))
    return (10 - total % 10) % 10 == int(number[17])


def fedex_express_reference(number: str) -> bool:
    """FedEx Express (12 digits): weights 3, 1, 7 from the left, sum mod 11 mod 10."""
    total = sum(int(d) * (3, 1, 7)[i % 3] for i, d in enumerate(number[:11]))
    return total % 11 % 10 == int(number[11])


def mod10_from_right(body: str) -> int:
    """USPS IMpb, FedEx Ground: weights 3, 1 from the rightmost digit of the body."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def dhl_reference(number: str) -> bool:
    """DHL Express (10 digits): the check digit is the first nine as a number, mod 7."""
    return int(number[:9]) % 7 == int(number[9])


def with_check(body: str, carrier: str) -> str:
    return body + rules.check_digit(body, carrier)


def test_it_accepts_the_carriers_published_examples():
    assert check("1Z999AA10123456784") == rules.TrackingMatch("1Z999AA10123456784", "ups", True)
    assert check("1Z 999 AA1 01 2345 6784").tracking_number == "1Z999AA10123456784"
    assert check("012345678983") == rules.TrackingMatch("012345678983", "fedex", True)


def test_it_rejects_a_wrong_check_digit_but_names_the_carrier_shape():
    assert check("1Z999AA10123456785") == rules.TrackingMatch("1Z999AA10123456785", "ups", False)
    assert check("012345678984") == rules.TrackingMatch("012345678984", "fedex", False)
    assert check("123456789") is None  # nine digits: no carrier's shape
    assert check("TBA123456789012") is None  # Amazon numbers carry no check digit


def test_s10_numbers_are_usps_when_issued_in_the_us_and_other_elsewhere():
    body = "EC12345678"[:10]
    us = body + rules.check_digit(body, "usps", suffix="US") + "US"
    assert check(us).carrier == "usps" and check(us).checksum_valid
    foreign = body + rules.check_digit(body, "other", suffix="DE") + "DE"
    assert check(foreign).carrier == "other" and check(foreign).checksum_valid


@given(st.text("0123456789ABCDEFGHJKLMNPRSTUVWXYZ", min_size=6, max_size=6), st.data())
def test_ups_check_digits_agree_with_the_published_algorithm(shipper, data):
    rest = data.draw(st.text("0123456789", min_size=9, max_size=9))
    for digit in "0123456789":
        number = "1Z" + shipper + rest + digit
        assert check(number).checksum_valid == ups_reference(number)


@given(st.text("0123456789", min_size=11, max_size=11))
def test_fedex_express_check_digits_agree_with_the_published_algorithm(body):
    for digit in "0123456789":
        assert check(body + digit).checksum_valid == fedex_express_reference(body + digit)


@given(st.text("0123456789", min_size=9, max_size=9))
def test_dhl_check_digits_agree_with_the_published_algorithm(body):
    for digit in "0123456789":
        assert check(body + digit).checksum_valid == dhl_reference(body + digit)


@given(st.sampled_from(("9400", "9205", "9361")), st.text("0123456789", min_size=17, max_size=17))
def test_usps_impb_check_digits_agree_with_the_published_algorithm(prefix, rest):
    body = prefix + rest
    for digit in "0123456789":
        verdict = check(body + digit)
        assert verdict.carrier == "usps"
        assert verdict.checksum_valid == (int(digit) == mod10_from_right(body))


@given(st.text("0123456789", min_size=14, max_size=14))
def test_fedex_ground_check_digits_agree_with_the_published_algorithm(body):
    for digit in "0123456789":
        assert check(body + digit).checksum_valid == (int(digit) == mod10_from_right(body))


@given(st.integers(0, 10_000), st.sampled_from(("ups", "usps", "fedex", "dhl", "other")))
@settings(max_examples=200)
def test_a_generated_number_is_valid_and_any_other_check_digit_is_not(seed, carrier):
    number, printed, label = _Maker(seed).tracking(carrier)
    verdict = check(printed)
    assert (verdict.tracking_number, verdict.checksum_valid) == (number, True)
    # FedEx Ground Economy numbers are USPS IMpb numbers too: only the text can tell them apart.
    assert verdict.carrier == label or (label, verdict.carrier) == ("fedex", "usps")
    position = len(number) - 3 if number.endswith("US") else len(number) - 1
    for digit in set("0123456789") - {number[position]}:
        wrong = number[:position] + digit + number[position + 1 :]
        assert not check(wrong).checksum_valid


@given(st.integers(0, 10_000), st.sampled_from(("ups", "usps", "fedex", "dhl", "other")))
@settings(max_examples=200)
def test_a_labelled_number_is_found_however_it_is_grouped(seed, carrier):
    number, printed, label = _Maker(seed).tracking(carrier)
    name = {"ups": "UPS", "usps": "USPS", "fedex": "FedEx", "dhl": "DHL", "other": "OnTrac"}[
        carrier
    ]
    text = f"Hi,\n\nYour order shipped today via {name}. Tracking number: {printed}\n\nThanks"
    assert find_tracking_numbers(text) == [rules.TrackingMatch(number, label, True)]


@given(st.text())
def test_normalize_is_idempotent_and_finding_never_fails(text):
    assert rules.normalize(rules.normalize(text)) == rules.normalize(text)
    found = find_tracking_numbers(text)
    assert all(match.checksum_valid for match in found)
    assert len({match.tracking_number for match in found}) == len(found)


def test_it_finds_numbers_in_a_supplier_message_in_order_of_appearance():
    fedex = with_check("77123456789", "fedex")
    text = (
        "Hi Jordan,\n\n"
        "PO 4500123456 shipped today via FedEx, tracking 7712 3456 789" + fedex[-1] + ".\n"
        "A second box went with UPS: 1Z-999-AA1-01-2345-6784\n"
        f"(repeat: {fedex})\n"
    )
    assert find_tracking_numbers(text) == [
        rules.TrackingMatch(fedex, "fedex", True),
        rules.TrackingMatch("1Z999AA10123456784", "ups", True),
    ]


def test_numbers_labelled_as_something_else_are_not_tracking_numbers():
    valid_fedex = with_check("48291034778", "fedex")
    valid_dhl = with_check("773120458", "dhl")
    text = (
        "Your package has shipped.\n\n"
        f"Invoice #: {valid_fedex}\n"
        f"Account: {valid_dhl}\n"
        f"Order number: {valid_dhl}\n"
    )
    assert find_tracking_numbers(text) == []


def test_telephone_numbers_are_not_tracking_numbers_even_when_their_digits_pass_a_check():
    phone = with_check("555201334", "dhl")  # ten digits that DHL's check accepts
    area, mid, last = phone[:3], phone[3:6], phone[6:]
    for line in (
        f"Tracking questions? Call {area}-{mid}-{last}",
        f"Shipping desk: ({area}) {mid}-{last}",
        f"Shipped today. +1 {area} {mid} {last}",
        f"Call our shipping line at {phone}.",
        f"Questions about the shipment: {phone}",
    ):
        assert find_tracking_numbers(line) == [], line


def test_a_signature_never_holds_a_tracking_number():
    number = with_check("338689303", "dhl")
    text = f"Tracking to follow.\n\nThanks,\nShipping Desk\nDelta Packaging Co.\nT: {number}"
    assert find_tracking_numbers(text) == []


def test_a_mistyped_number_yields_nothing_not_a_shorter_number_inside_it():
    good = with_check("420891669400741403654869836", "usps")
    wrong = good[:-1] + str((int(good[-1]) + 1) % 10)
    grouped = " ".join(wrong[i : i + 4] for i in range(0, len(wrong), 4))
    assert check(wrong).checksum_valid is False
    assert find_tracking_numbers(f"Tracking for PO 74325: {grouped}") == []


def test_a_bare_number_counts_in_a_message_about_tracking():
    number = with_check("77301480980", "fedex")
    reply = f"Here you go: {number}\n\n> Could you send tracking for PO 89189?"
    assert find_tracking_numbers(reply) == [rules.TrackingMatch(number, "fedex", True)]
    assert find_tracking_numbers(f"Meeting moved, dial-in code {number}") == []


def test_a_number_valid_for_two_carriers_takes_the_carrier_named_beside_it():
    number = with_check("926129900012345678901", "usps")  # IMpb and FedEx Ground Economy
    assert find_tracking_numbers(f"FedEx Ground Economy: {number}")[0].carrier == "fedex"
    assert find_tracking_numbers(f"USPS tracking: {number}")[0].carrier == "usps"
    assert check(number).carrier == "usps"


def test_looks_tracking_like_is_a_cheap_filter_that_misses_no_number():
    assert rules.looks_tracking_like("see 1Z999AA10123456784")
    assert rules.looks_tracking_like("7712-3456-7890")
    assert not rules.looks_tracking_like("Thanks, see you Tuesday at 10:30. Order 88123.")


def test_it_reads_po_numbers_in_their_usual_spellings():
    text = (
        "PO 4500123456 shipped. Also P.O. #: 77812 and purchase order 8812, PO-2025-0142.\n"
        "Re PO# LMG407806; repeat PO 4500123456"
    )
    assert find_po_numbers(text) == ["4500123456", "77812", "8812", "2025-0142", "LMG407806"]
    assert find_po_numbers("Please post our order to the depot") == []


def test_a_thread_yields_each_shipment_once_with_its_po_date_and_supplier():
    fedex = with_check("77123456789", "fedex")
    notice = (
        f"Hi Jordan,\n\nWe shipped PO 4500123456 on March 3, 2025 via FedEx.\nTracking: {fedex}\n"
        "Invoice #INV-204411 will follow.\n\nBest regards,\nDana Whitfield\n"
        "Acme Fasteners Inc.\nT: (312) 555-0188"
    )
    reply = "Thanks, got it.\n\nOn Mon, Dana wrote:\n" + "\n".join(
        "> " + line for line in notice.splitlines()
    )
    extraction = extract(
        [("Shipped: PO 4500123456", notice), ("RE: Shipped: PO 4500123456", reply)],
        senders=[("Dana Whitfield", "dana@acme-fasteners.com"), ("Jordan", "j@lakeside.com")],
        sent_at=[datetime(2025, 3, 3, 15, tzinfo=UTC), datetime(2025, 3, 4, 9, tzinfo=UTC)],
    )
    assert extraction.supplier == "Acme Fasteners Inc."
    assert extraction.shipments == [
        {
            "tracking_number": fedex,
            "carrier": "fedex",
            "po_number": "4500123456",
            "shipped_date": "2025-03-03",
            "confidence": 0.85,
            "checksum_valid": True,
        }
    ]


def test_the_supplier_falls_back_to_the_senders_domain_and_never_a_carrier():
    text = "Your order shipped, UPS tracking 1Z999AA10123456784"
    extraction = extract(
        [("Shipped", text), ("Fwd: UPS Update", "Forwarded notice " + text)],
        senders=[("Luis", "luis@cascade-lab.com"), ("UPS", "pkginfo@ups.com")],
    )
    assert extraction.supplier == "Cascade Lab"
    assert extract([("Update", text)], senders=[("UPS", "pkginfo@ups.com")]).supplier == ""


def test_a_thread_without_tracking_numbers_has_no_shipments():
    extraction = extract(
        [
            (
                "Invoice for PO 4500123456",
                "Please find attached invoice 8123 4410 2279.\nCall 555-201-3344.",
            )
        ]
    )
    assert extraction.shipments == []

"""Event-level comparison with tpm2-tools' own parse of the same logs (tests/data/eventlogs/tpm2-tools).

event-raw/*.yaml gives every event's PCR, type, digests and size; event-pretty/*.yaml adds the
decoded UEFI variables, signature lists, load options, image device paths and GPT partitions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from attest.verify import efi
from attest.verify import eventlog as el

# Real firmware certificates break RFC 5280 in ways cryptography warns about; decoding keeps them.
pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning", "ignore:Attribute's length:UserWarning"
)

TOOLS = Path(__file__).parent / "data" / "eventlogs" / "tpm2-tools"
RAW = [*sorted((TOOLS / "event-raw").glob("*.yaml")), TOOLS / "event.bin.yaml"]
PRETTY = sorted((TOOLS / "event-pretty").glob("*.yaml"))

# Known bugs of the efivar version tpm2-tools 5.4 was built with, not of the logs: it prints
# an IPv4 node without the separators between its addresses.
EFIVAR_BUGS = {"PciRoot(0x3)/Pci(0x0,0x0)/Pci(0x0,0x0)/MAC(0cc47aff601c,1)/IPv4(0.0.0.00.0.0.0,0,0)"}


def load_yaml(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if "\nevents:\n  PCRIndex:" in text:
        # tpm2-tools prints SHA-1 logs as one mapping with repeated keys; make each event a list item.
        text = text.replace("\n  PCRIndex:", "\n- PCRIndex:")
    events = yaml.safe_load(text)["events"]
    assert isinstance(events, list)
    return events


def log_of(path: Path) -> el.EventLog:
    return el.parse((TOOLS / path.name.removesuffix(".yaml")).read_bytes())


def yaml_digests(event: dict[str, Any]) -> dict[str, str]:
    if "Digests" in event:
        return {d["AlgorithmId"]: d["Digest"] for d in event["Digests"]}
    return {"sha1": event["Digest"]}


@pytest.mark.parametrize("path", RAW, ids=lambda p: p.name)
def test_events_match_tpm2_tools(path: Path) -> None:
    expected = load_yaml(path)
    log = log_of(path)
    assert len(log.events) == len(expected)
    for event, want in zip(log.events, expected, strict=True):
        assert event.pcr == want["PCRIndex"]
        assert event.type_name == want["EventType"]
        assert {k: v.hex() for k, v in event.digests.items()} == yaml_digests(want)
        assert len(event.data) == want["EventSize"]


def pretty_pairs() -> list[tuple[str, el.Event, dict[str, Any]]]:
    pairs = []
    # Decoding happens here, at collection, where the module's filterwarnings mark does not reach.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in PRETTY:
            log = log_of(path)
            for event, want in zip(log.events, load_yaml(path), strict=True):
                assert event.decoded is None or event.decoded.kind
                pairs.append((f"{path.name}#{event.index}", event, want))
    return pairs


PAIRS = pretty_pairs()


def with_event(kind: type[efi.Decoded], key: str) -> list[tuple[str, el.Event, dict[str, Any]]]:
    return [
        p
        for p in PAIRS
        if isinstance(p[1].decoded, kind) and isinstance(p[2].get("Event"), dict) and key in p[2]["Event"]
    ]


VARIABLES = with_event(efi.UefiVariable, "VariableName")


@pytest.mark.parametrize(("where", "event", "want"), VARIABLES, ids=[p[0] for p in VARIABLES])
def test_variables_match(where: str, event: el.Event, want: dict[str, Any]) -> None:
    var = event.decoded
    assert isinstance(var, efi.UefiVariable)
    w = want["Event"]
    assert var.guid == w["VariableName"]
    assert var.name == w["UnicodeName"]
    assert len(var.data) == w["VariableDataLength"]
    data = w.get("VariableData")
    if isinstance(data, dict) and "Enabled" in data and "Description" not in data:
        assert isinstance(var.value, efi.Boolean)
        # tpm2-tools shows a SecureBoot measured empty as "No"; here it is None (absent).
        assert var.value.value in ((True,) if data["Enabled"] == "Yes" else (False, None))
    elif isinstance(data, dict) and "Description" in data:
        option = var.value
        assert isinstance(option, efi.LoadOption)
        assert option.description == data["Description"]
        assert option.active == (data["Enabled"] == "Yes")
        assert option.device_paths[0] == data["DevicePath"]
    elif isinstance(data, dict) and "String" in data:
        assert var.value == efi.Text(data["String"], "ascii")
    elif isinstance(data, list) and data and isinstance(data[0], str):
        assert var.value == efi.BootOrder(tuple(data))
    elif isinstance(data, list) and data and "SignatureType" in data[0]:
        db = var.value
        assert isinstance(db, efi.SignatureDatabase)
        assert len(db.lists) == len(data)
        for got, exp in zip(db.lists, data, strict=True):
            assert got.signature_type == exp["SignatureType"]
            assert len(got.header) == exp["SignatureHeaderSize"]
            assert [(s.owner, s.data.hex()) for s in got.signatures] == [
                (k["SignatureOwner"], k["SignatureData"]) for k in exp["Keys"]
            ]
    elif isinstance(data, list) and data and "SignatureOwner" in data[0] and var.name == "Shim":
        # shim logs its vendor certificate as bare DER; tpm2-tools misreads its first 16 bytes as an owner.
        assert isinstance(var.value, efi.Certificate)
        assert var.value.subject is not None
        assert "Red Hat" in var.value.subject
    elif isinstance(data, list) and data and "SignatureOwner" in data[0]:
        (entry,) = data
        assert isinstance(var.value, efi.SignatureData)
        assert (var.value.owner, var.value.data.hex()) == (entry["SignatureOwner"], entry["SignatureData"])
        assert var.value.certificate is not None
        assert var.value.certificate.subject
    elif isinstance(data, str):
        assert var.data.hex() == data
    else:
        assert data is None
        assert var.data == b""


IMAGES = with_event(efi.ImageLoad, "DevicePath")


@pytest.mark.parametrize(("where", "event", "want"), IMAGES, ids=[p[0] for p in IMAGES])
def test_image_loads_match(where: str, event: el.Event, want: dict[str, Any]) -> None:
    image = event.decoded
    assert isinstance(image, efi.ImageLoad)
    w = want["Event"]
    assert image.location == w["ImageLocationInMemory"]
    assert image.length == w["ImageLengthInMemory"]
    assert image.link_time_address == w["ImageLinkTimeAddress"]
    assert len(image.device_path_raw) == w["LengthOfDevicePath"]
    if w["DevicePath"] not in EFIVAR_BUGS:
        assert image.device_path == w["DevicePath"]


def test_efivar_ipv4_bug_is_the_only_difference() -> None:
    (_where, event, _want) = next(p for p in IMAGES if p[2]["Event"]["DevicePath"] in EFIVAR_BUGS)
    assert isinstance(event.decoded, efi.ImageLoad)
    assert event.decoded.device_path == (
        "PciRoot(0x3)/Pci(0x0,0x0)/Pci(0x0,0x0)/MAC(0cc47aff601c,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)"
    )


def test_golden_files_exercise_every_decoder() -> None:
    assert len(VARIABLES) > 80
    assert len(IMAGES) > 20
    kinds = {type(p[1].decoded).__name__ for p in PAIRS}
    assert {"FirmwareBlob", "GptData", "Text", "Separator", "UefiVariable", "ImageLoad"} <= kinds


BLOBS = with_event(efi.FirmwareBlob, "BlobBase")


@pytest.mark.parametrize(("where", "event", "want"), BLOBS, ids=[p[0] for p in BLOBS])
def test_firmware_blobs_match(where: str, event: el.Event, want: dict[str, Any]) -> None:
    assert event.decoded == efi.FirmwareBlob(want["Event"]["BlobBase"], want["Event"]["BlobLength"], None)


GPTS = with_event(efi.GptData, "Header")


@pytest.mark.parametrize(("where", "event", "want"), GPTS, ids=[p[0] for p in GPTS])
def test_gpt_events_match(where: str, event: el.Event, want: dict[str, Any]) -> None:
    gpt = event.decoded
    assert isinstance(gpt, efi.GptData)
    header = want["Event"]["Header"]
    assert gpt.disk_guid == header["DiskGUID"]
    assert (gpt.my_lba, gpt.alternate_lba) == (header["MyLBA"], header["AlternateLBA"])
    assert (gpt.first_usable_lba, gpt.last_usable_lba) == (header["FirstUsableLBA"], header["LastUsableLBA"])
    assert [
        (p.type_guid, p.unique_guid, p.starting_lba, p.ending_lba, p.attributes, p.name)
        for p in gpt.partitions
    ] == [
        (
            p["PartitionTypeGUID"],
            p["UniquePartitionGUID"],
            p["StartingLBA"],
            p["EndingLBA"],
            p["Attributes"],
            p["PartitionName"],
        )
        for p in want["Event"]["Partitions"]
    ]


STRINGS = [p for p in PAIRS if p[1].type_name in ("EV_EFI_ACTION", "EV_IPL")]


@pytest.mark.parametrize(("where", "event", "want"), STRINGS, ids=[p[0] for p in STRINGS])
def test_strings_match(where: str, event: el.Event, want: dict[str, Any]) -> None:
    shown = want["Event"]["String"] if isinstance(want["Event"], dict) else want["Event"]
    # tpm2-tools prints the bytes as they are (NULs included) into the YAML string.
    assert shown.encode("latin-1") == event.data
    assert isinstance(event.decoded, efi.Text)
    if event.decoded.encoding == "ascii":
        assert event.decoded.text == shown.rstrip("\0")
    else:
        assert event.decoded.text == event.data[: len(event.data) // 2 * 2].decode("utf-16-le").rstrip("\0")

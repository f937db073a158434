"""Reference policies: what a known-good node's evidence looks like, and judging evidence by it.

The format is YAML, versioned, and documented in docs/policy.md. Loading is strict: an unknown
key is an error, because a misspelt rule that is silently ignored is a rule that never fails.

Evaluation only ever looks at trusted facts: PCR values inside the signed quote, event-log
events of PCRs whose replay reproduced the quoted value, and IMA entries up to the one whose
fold equals the quoted PCR 10. Events are judged by their digests (which the replay binds);
their decoded data is used only where it is itself bound to the digest (`Event.verified`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from attest import boundedyaml
from attest.containerlog import CONTAINER_PCR, ContainerEntry
from attest.errors import ParseError
from attest.reasons import Finding, Reason
from attest.tcg import EventType, hash_alg
from attest.verify import efi
from attest.verify.eventlog import Event, EventLog
from attest.verify.ima import BOOT_AGGREGATE, ImaEntry

POLICY_VERSION = 1
MAX_POLICY_BYTES = 16 * 1024 * 1024
# The schema nests four deep (policy.boot.pcrs.0: [...]); deeper is not a policy (and no
# alias is allowed either: attest.boundedyaml).
MAX_POLICY_DEPTH = 16

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
_SB_VARIABLES = {
    "SecureBoot": EFI_GLOBAL_VARIABLE,
    "PK": EFI_GLOBAL_VARIABLE,
    "KEK": EFI_GLOBAL_VARIABLE,
    "db": EFI_IMAGE_SECURITY_DATABASE,
    "dbx": EFI_IMAGE_SECURITY_DATABASE,
}
SECURE_BOOT_PCR = 7
EFI_APPLICATION_PCR = 4
GRUB_COMMAND_PCR = 8
# Firmware and platform-configuration PCRs that `policy create` pins by value: they do not
# depend on the disk (PCR 5 holds the GPT) or on what the boot loader loads.
PINNED_PCRS = (0, 1, 2, 3, 6)
_DRIVER_TYPES = (int(EventType.EV_EFI_BOOT_SERVICES_DRIVER), int(EventType.EV_EFI_RUNTIME_SERVICES_DRIVER))
_APP_TYPE = int(EventType.EV_EFI_BOOT_SERVICES_APPLICATION)
_DRIVER_CONFIG = int(EventType.EV_EFI_VARIABLE_DRIVER_CONFIG)
_IPL = int(EventType.EV_IPL)
_HEX = re.compile(r"^[0-9a-f]+$")
_DIGEST_REF = re.compile(r"^(?P<repo>[^@\s]+)@(?P<alg>sha256|sha384|sha512):(?P<hex>[0-9a-f]+)$")


@dataclass(frozen=True)
class BootPolicy:
    pcrs: Mapping[int, frozenset[str]] = field(default_factory=dict)  # allowed final values, hex
    secure_boot: bool = False  # True: SecureBoot must be measured as enabled
    pk: frozenset[str] | None = None  # exact set of signature fingerprints, None: not checked
    kek: frozenset[str] | None = None
    db: frozenset[str] | None = None
    dbx_includes: frozenset[str] | None = None  # revocations that must be present
    efi_applications: frozenset[str] | None = None  # allowed image digests, hex
    efi_drivers: frozenset[str] | None = None
    event_digests: Mapping[int, frozenset[str]] = field(default_factory=dict)  # per PCR: allowed digests
    kernel_cmdline: frozenset[str] | None = None  # exact allowed command lines


@dataclass(frozen=True)
class ImaPolicy:
    allow: Mapping[str, frozenset[str]] = field(default_factory=dict)  # path -> {"sha256:hex"}
    exclude: tuple[str, ...] = ()  # globs whose entries are not judged
    unlisted: str = "deny"  # "deny" or "allow": a path that is neither allowed nor excluded
    allow_violations: bool = False


@dataclass(frozen=True)
class ContainerPolicy:
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    name: str
    bank: str = "sha256"
    allow_sha1: bool = False
    boot: BootPolicy | None = None
    ima: ImaPolicy | None = None
    containers: ContainerPolicy | None = None

    def required_pcrs(self) -> frozenset[int]:
        """PCRs the quote must cover and the logs must replay for this policy to be judged."""
        pcrs: set[int] = set()
        if self.boot is not None:
            b = self.boot
            pcrs.update(b.pcrs)
            pcrs.update(b.event_digests)
            if b.secure_boot or any(x is not None for x in (b.pk, b.kek, b.db, b.dbx_includes)):
                pcrs.add(SECURE_BOOT_PCR)
            if b.efi_applications is not None or b.efi_drivers is not None:
                pcrs.add(EFI_APPLICATION_PCR)
            if b.efi_drivers is not None:
                pcrs.add(2)
            if b.kernel_cmdline is not None:
                pcrs.add(GRUB_COMMAND_PCR)
        if self.ima is not None:
            pcrs.add(10)
        if self.containers is not None:
            pcrs.add(23)
        return frozenset(pcrs)


# --- loading -------------------------------------------------------------------------------


def _invalid(where: str, what: str) -> ParseError:
    return ParseError(Reason.POLICY_INVALID, f"{where}: {what}")


def _mapping(value: Any, where: str, keys: Iterable[object] | None) -> Mapping[Any, Any]:
    """`keys` is the schema's key set; None for mappings whose keys are data (paths)."""
    if not isinstance(value, Mapping):
        raise _invalid(where, "must be a mapping")
    unknown = set() if keys is None else set(value) - set(keys)
    if unknown:
        raise _invalid(where, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(where, "must be a list of strings")
    return value


def _hexes(value: Any, where: str, size: int | None = None) -> frozenset[str]:
    out = set()
    for v in _strings(value, where):
        h = v.lower().removeprefix("0x")
        if not _HEX.match(h) or (size is not None and len(h) != 2 * size):
            raise _invalid(where, f"{v!r} is not a {'' if size is None else f'{size}-byte '}hex digest")
        out.add(h)
    return frozenset(out)


def _pcr_index(key: Any, where: str) -> int:
    try:
        pcr = int(key)
    except (TypeError, ValueError):
        raise _invalid(where, f"{key!r} is not a PCR index") from None
    if not 0 <= pcr < 24:
        raise _invalid(where, f"PCR {pcr} out of range 0-23")
    return pcr


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid(where, "must be true or false")
    return value


def _boot(doc: Any, size: int) -> BootPolicy:
    d = _mapping(
        doc,
        "boot",
        (
            "pcrs",
            "secure_boot",
            "pk",
            "kek",
            "db",
            "dbx_includes",
            "efi_applications",
            "efi_drivers",
            "event_digests",
            "kernel_cmdline",
        ),
    )

    def opt(key: str, digest_size: int | None = size) -> frozenset[str] | None:
        return None if d.get(key) is None else _hexes(d[key], f"boot.{key}", digest_size)

    def per_pcr(key: str) -> dict[int, frozenset[str]]:
        raw = _mapping(d.get(key) or {}, f"boot.{key}", None)
        return {_pcr_index(k, f"boot.{key}"): _hexes(v, f"boot.{key}.{k}", size) for k, v in raw.items()}

    cmdline = d.get("kernel_cmdline")
    return BootPolicy(
        pcrs=per_pcr("pcrs"),
        secure_boot=_bool(d.get("secure_boot", False), "boot.secure_boot"),
        pk=opt("pk", 32),
        kek=opt("kek", 32),
        db=opt("db", 32),
        dbx_includes=opt("dbx_includes", 32),
        efi_applications=opt("efi_applications"),
        efi_drivers=opt("efi_drivers"),
        event_digests=per_pcr("event_digests"),
        kernel_cmdline=None if cmdline is None else frozenset(_strings(cmdline, "boot.kernel_cmdline")),
    )


def _ima(doc: Any) -> ImaPolicy:
    d = _mapping(doc, "ima", ("allow", "exclude", "unlisted", "allow_violations"))
    allow: dict[str, frozenset[str]] = {}
    for path, digests in _mapping(d.get("allow") or {}, "ima.allow", None).items():
        where = f"ima.allow[{path!r}]"
        values = set()
        for v in _strings(digests, where):
            alg, sep, hexdigest = v.lower().partition(":")
            if not sep or not _HEX.match(hexdigest):
                raise _invalid(where, f"{v!r} is not ALG:HEX")
            try:
                if hash_alg(alg).size * 2 != len(hexdigest):
                    raise _invalid(where, f"{v!r} has the wrong length for {alg}")
            except KeyError:
                raise _invalid(where, f"unknown digest algorithm {alg!r}") from None
            values.add(f"{alg}:{hexdigest}")
        allow[str(path)] = frozenset(values)
    unlisted = d.get("unlisted", "deny")
    if unlisted not in ("deny", "allow"):
        raise _invalid("ima.unlisted", "must be deny or allow")
    return ImaPolicy(
        allow=allow,
        exclude=tuple(_strings(d.get("exclude") or [], "ima.exclude")),
        unlisted=unlisted,
        allow_violations=_bool(d.get("allow_violations", False), "ima.allow_violations"),
    )


def _containers(doc: Any) -> ContainerPolicy:
    d = _mapping(doc, "containers", ("images",))
    images = tuple(_strings(d.get("images") or [], "containers.images"))
    for image in images:
        if "@" in image and not _DIGEST_REF.match(image) and not image.startswith("sha256:"):
            raise _invalid("containers.images", f"{image!r}: a pinned image is REPO@sha256:HEX")
    return ContainerPolicy(images=images)


def load_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy document; ParseError(POLICY_INVALID) says what is wrong where."""
    if len(text) > MAX_POLICY_BYTES:
        raise _invalid("policy", f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = boundedyaml.load(text, boundedyaml.SafeLoader, MAX_POLICY_DEPTH)
    except boundedyaml.ShapeError as e:
        raise _invalid("policy", str(e)) from None
    except yaml.YAMLError as e:
        raise _invalid("policy", f"not YAML: {e}".splitlines()[0]) from None
    d = _mapping(doc, "policy", ("version", "name", "bank", "allow_sha1", "boot", "ima", "containers"))
    if d.get("version") != POLICY_VERSION:
        raise _invalid("policy.version", f"must be {POLICY_VERSION}, got {d.get('version')!r:.60}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("policy.name", "must be a non-empty string")
    bank = d.get("bank", "sha256")
    try:
        size = hash_alg(str(bank)).size
    except KeyError:
        raise _invalid("policy.bank", f"unknown bank {bank!r:.60}") from None
    allow_sha1 = _bool(d.get("allow_sha1", False), "policy.allow_sha1")
    if bank == "sha1" and not allow_sha1:
        raise _invalid("policy.bank", "a SHA-1 policy needs allow_sha1: true")
    return Policy(
        name=name,
        bank=str(bank),
        allow_sha1=allow_sha1,
        boot=None if d.get("boot") is None else _boot(d["boot"], size),
        ima=None if d.get("ima") is None else _ima(d["ima"]),
        containers=None if d.get("containers") is None else _containers(d["containers"]),
    )


def dump_policy(policy: Policy) -> str:
    """The YAML form `load_policy` reads back to an equal Policy."""
    doc: dict[str, Any] = {"version": POLICY_VERSION, "name": policy.name, "bank": policy.bank}
    if policy.allow_sha1:
        doc["allow_sha1"] = True
    if policy.boot is not None:
        b = policy.boot
        boot: dict[str, Any] = {"secure_boot": b.secure_boot}
        if b.pcrs:
            boot["pcrs"] = {p: sorted(v) for p, v in sorted(b.pcrs.items())}
        for key in ("pk", "kek", "db", "dbx_includes", "efi_applications", "efi_drivers"):
            value = getattr(b, key)
            if value is not None:
                boot[key] = sorted(value)
        if b.event_digests:
            boot["event_digests"] = {p: sorted(v) for p, v in sorted(b.event_digests.items())}
        if b.kernel_cmdline is not None:
            boot["kernel_cmdline"] = sorted(b.kernel_cmdline)
        doc["boot"] = boot
    if policy.ima is not None:
        i = policy.ima
        doc["ima"] = {
            "unlisted": i.unlisted,
            "allow_violations": i.allow_violations,
            "exclude": list(i.exclude),
            "allow": {path: sorted(v) for path, v in sorted(i.allow.items())},
        }
    if policy.containers is not None:
        doc["containers"] = {"images": list(policy.containers.images)}
    header = (
        "# Reference policy (format: docs/policy.md). Generated from known-good evidence:\n"
        "# review it before applying; every list is an allowlist.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


# --- facts from the event log -------------------------------------------------------------


def _fingerprint(sig: efi.SignatureData) -> str:
    return hashlib.sha256(sig.data).hexdigest()


@dataclass(frozen=True)
class SecureBootState:
    """The PCR 7 variables as the firmware measured them, from verified events only."""

    enabled: bool | None  # None: SecureBoot not measured (or not verifiable)
    keys: Mapping[str, frozenset[str]]  # "PK"/"KEK"/"db"/"dbx" -> signature fingerprints
    events: Mapping[str, int]  # variable -> index of the event it came from


def secure_boot_state(events: Sequence[Event]) -> SecureBootState:
    enabled: bool | None = None
    keys: dict[str, frozenset[str]] = {}
    where: dict[str, int] = {}
    for e in events:
        if e.pcr != SECURE_BOOT_PCR or e.type != _DRIVER_CONFIG or not e.verified:
            continue
        var = e.decoded
        if not isinstance(var, efi.UefiVariable) or _SB_VARIABLES.get(var.name) != var.guid:
            continue
        where[var.name] = e.index
        if var.name == "SecureBoot":
            # A zero-length SecureBoot variable means the firmware does not support it: off.
            enabled = isinstance(var.value, efi.Boolean) and var.value.value is True
        elif isinstance(var.value, efi.SignatureDatabase):
            keys[var.name] = frozenset(_fingerprint(s) for lst in var.value.lists for s in lst.signatures)
        else:
            keys[var.name] = frozenset()
    return SecureBootState(enabled, keys, where)


def _grub_cmdline(e: Event) -> str | None:
    """The kernel command line GRUB measured, when the event's text is bound to its digest."""
    if e.pcr != GRUB_COMMAND_PCR or e.type != _IPL or not e.verified:
        return None
    text = e.data.rstrip(b"\0")
    if not text.startswith(b"kernel_cmdline: "):
        return None
    return text[len(b"kernel_cmdline: ") :].decode("utf-8", "replace")


def _describe(e: Event) -> str:
    d = e.decoded
    path = getattr(d, "device_path", None) or (getattr(d, "text", None) if isinstance(d, efi.Text) else None)
    return f"PCR {e.pcr} event {e.index} {e.type_name}" + (f" ({path})" if path else "")


# --- evaluation ----------------------------------------------------------------------------


def evaluate_boot(
    policy: Policy,
    log: EventLog | None,
    quoted: Mapping[int, bytes],
    replayed: frozenset[int],
) -> list[Finding]:
    """Judge the boot chain. `quoted` are the signed PCR values of the policy's bank;
    `replayed` the PCRs whose log replay reproduced them (only their events are used)."""
    boot = policy.boot
    if boot is None:
        return []
    findings: list[Finding] = []
    for pcr, allowed in sorted(boot.pcrs.items()):
        value = quoted.get(pcr)
        if value is None:
            findings.append(_unverified("boot/pcrs", pcr, "is not in the quote"))
        elif value.hex() not in allowed:
            findings.append(
                Finding(
                    Reason.POLICY_PCR_MISMATCH,
                    f"PCR {pcr} {policy.bank} value {value.hex()[:16]}.. not in {_rule(policy, 'boot/pcrs')}",
                    "boot/pcrs",
                    pcr,
                )
            )
    needed = policy.required_pcrs() - set(boot.pcrs) - {10, 23}
    missing = sorted(p for p in needed if p not in replayed)
    for pcr in missing:
        why = "is not in the quote" if pcr not in quoted else "was not reproduced by the event log"
        findings.append(_unverified("boot", pcr, why))
    if log is None:
        return findings
    events = [e for e in log.events if e.pcr in replayed and e.type != int(EventType.EV_NO_ACTION)]
    bank = policy.bank

    def digest(e: Event) -> str:
        return e.digests[bank].hex() if bank in e.digests else ""

    if SECURE_BOOT_PCR in replayed:
        findings += _secure_boot(policy, secure_boot_state(events))
    # Code allowlists also govern the PCR the code is measured into: an event there that is
    # neither an allowed digest nor data-bound could be a retyped image, so it fails too.
    code_rules: dict[int, tuple[frozenset[str], str]] = {}
    if boot.efi_applications is not None:
        code_rules[EFI_APPLICATION_PCR] = (
            boot.efi_applications | (boot.efi_drivers or frozenset()),
            "boot/efi_applications",
        )
    if boot.efi_drivers is not None:
        code_rules[2] = (boot.efi_drivers, "boot/efi_drivers")
    cmdlines_seen = 0
    for e in events:
        d = digest(e)
        if e.type == _APP_TYPE and boot.efi_applications is not None and d not in boot.efi_applications:
            findings.append(_not_allowed(policy, e, d, "boot/efi_applications"))
        elif e.type in _DRIVER_TYPES and boot.efi_drivers is not None and d not in boot.efi_drivers:
            findings.append(_not_allowed(policy, e, d, "boot/efi_drivers"))
        elif e.pcr in code_rules and d not in code_rules[e.pcr][0] and not e.verified:
            findings.append(
                _not_allowed(policy, e, d, code_rules[e.pcr][1], " and its data does not bind it")
            )
        per_pcr = boot.event_digests.get(e.pcr)
        if per_pcr is not None and d not in per_pcr:
            findings.append(_not_allowed(policy, e, d, f"boot/event_digests/{e.pcr}"))
        cmdline = _grub_cmdline(e)
        if cmdline is not None and boot.kernel_cmdline is not None:
            cmdlines_seen += 1
            if cmdline not in boot.kernel_cmdline:
                findings.append(
                    Finding(
                        Reason.POLICY_KERNEL_CMDLINE,
                        f"PCR {e.pcr} event {e.index} kernel command line {cmdline!r} not in "
                        f"{_rule(policy, 'boot/kernel_cmdline')}",
                        "boot/kernel_cmdline",
                        e.pcr,
                        e.index,
                    )
                )
    # GRUB's "kernel_cmdline: " label is not covered by the digest: a relabelled line would
    # escape the rule, so a policy with the rule insists on seeing the line at all.
    if boot.kernel_cmdline is not None and cmdlines_seen == 0 and GRUB_COMMAND_PCR in replayed:
        findings.append(
            Finding(
                Reason.POLICY_KERNEL_CMDLINE,
                f"no verified kernel command line event in PCR {GRUB_COMMAND_PCR}: "
                f"{_rule(policy, 'boot/kernel_cmdline')} requires one",
                "boot/kernel_cmdline",
                GRUB_COMMAND_PCR,
            )
        )
    return findings


def _rule(policy: Policy, rule: str) -> str:
    return f"policy '{policy.name}' rule '{rule}'"


def _unverified(rule: str, pcr: int, why: str) -> Finding:
    return Finding(
        Reason.POLICY_PCR_UNVERIFIED,
        f"PCR {pcr} {why}: rule '{rule}' cannot be judged on it",
        rule,
        pcr,
    )


def _not_allowed(policy: Policy, e: Event, digest: str, rule: str, why: str = "") -> Finding:
    return Finding(
        Reason.POLICY_EVENT_NOT_ALLOWED,
        f"{_describe(e)} digest {digest[:16]}.. not in {_rule(policy, rule)}{why}",
        rule,
        e.pcr,
        e.index,
    )


def _secure_boot(policy: Policy, state: SecureBootState) -> list[Finding]:
    boot = policy.boot
    assert boot is not None
    findings = []
    if boot.secure_boot and state.enabled is not True:
        detail = (
            "measured as disabled"
            if state.enabled is False
            else "not measured (no verified SecureBoot event)"
        )
        findings.append(
            Finding(
                Reason.POLICY_SECURE_BOOT_DISABLED,
                f"Secure Boot {detail}; {_rule(policy, 'boot/secure_boot')} requires it",
                "boot/secure_boot",
                SECURE_BOOT_PCR,
                state.events.get("SecureBoot"),
            )
        )
    for var, expected in (("PK", boot.pk), ("KEK", boot.kek), ("db", boot.db)):
        if expected is None:
            continue
        got = state.keys.get(var)
        if got != expected:
            if got is None:
                detail = "not measured"
            else:
                extra, absent = sorted(got - expected), sorted(expected - got)
                detail = (
                    f"{len(extra)} unexpected ({', '.join(x[:16] for x in extra)}), {len(absent)} missing"
                )
            findings.append(
                Finding(
                    Reason.POLICY_SECURE_BOOT_KEYS,
                    f"Secure Boot {var} {detail}: {_rule(policy, f'boot/{var.lower()}')}",
                    f"boot/{var.lower()}",
                    SECURE_BOOT_PCR,
                    state.events.get(var),
                )
            )
    if boot.dbx_includes is not None:
        missing = sorted(boot.dbx_includes - state.keys.get("dbx", frozenset()))
        if missing:
            findings.append(
                Finding(
                    Reason.POLICY_SECURE_BOOT_KEYS,
                    f"Secure Boot dbx lacks {len(missing)} required revocation(s) "
                    f"({', '.join(m[:16] for m in missing[:5])}): {_rule(policy, 'boot/dbx_includes')}",
                    "boot/dbx_includes",
                    SECURE_BOOT_PCR,
                    state.events.get("dbx"),
                )
            )
    return findings


def evaluate_ima(policy: Policy, entries: Iterable[ImaEntry]) -> list[Finding]:
    """Judge IMA entries that the quote covers (the caller cut the list at the quoted PCR 10)."""
    ima = policy.ima
    if ima is None:
        return []
    findings = []
    for entry in entries:
        if entry.index == 0 and entry.path == BOOT_AGGREGATE:
            continue  # checked against the quoted boot PCRs, not against the allowlist
        if entry.violation:
            if not ima.allow_violations:
                findings.append(
                    Finding(
                        Reason.POLICY_IMA_VIOLATION,
                        f"IMA entry {entry.index} {entry.path!r} is a measurement violation (file changed "
                        f"while measured or open for write): {_rule(policy, 'ima/allow_violations')}",
                        "ima/allow_violations",
                        10,
                        entry.index,
                    )
                )
            continue
        path = entry.path or ""
        if any(fnmatch.fnmatchcase(path, glob) for glob in ima.exclude):
            continue
        measured = f"{entry.digest_alg}:{(entry.digest or b'').hex()}"
        allowed = ima.allow.get(path)
        if allowed is None:
            if ima.unlisted == "allow":
                continue
            findings.append(
                Finding(
                    Reason.POLICY_IMA_NOT_ALLOWED,
                    f"IMA entry {entry.index} {path!r} ({measured[:24]}..) "
                    f"not in {_rule(policy, 'ima/allow')}",
                    "ima/allow",
                    10,
                    entry.index,
                )
            )
        elif measured not in allowed:
            findings.append(
                Finding(
                    Reason.POLICY_IMA_NOT_ALLOWED,
                    f"IMA entry {entry.index} {path!r} digest {measured[:24]}.. not allowed for that path "
                    f"by {_rule(policy, 'ima/allow')}",
                    "ima/allow",
                    10,
                    entry.index,
                )
            )
    return findings


def image_allowed(policy: Policy, image: str, digest: str | None) -> bool:
    """Is a container image, identified by reference and content digest ("sha256:hex"), allowed?

    Entries: "sha256:HEX" (that content under any name), "REPO@sha256:HEX" (exactly that),
    or a repository glob "registry.example/team/*" (any content from there). Without a digest
    only the glob form can match, and only when the policy says so explicitly.
    """
    if policy.containers is None:
        return True
    repo = image.split("@", 1)[0]
    repo_no_tag = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
    for entry in policy.containers.images:
        if entry.startswith("sha256:"):
            if digest == entry:
                return True
            continue
        m = _DIGEST_REF.match(entry)
        if m:
            if digest == f"{m['alg']}:{m['hex']}" and fnmatch.fnmatchcase(repo_no_tag, m["repo"]):
                return True
        elif fnmatch.fnmatchcase(repo_no_tag, entry):
            return True
    return False


CONTAINERS_RULE = "containers/images"


def evaluate_containers(policy: Policy, entries: Iterable[ContainerEntry]) -> list[Finding]:
    """Judge container log records that the quote covers (the caller cut the log at the quoted
    PCR 23). A record without an image digest fails whatever the rules say: the runtime did not
    say what content ran, and a tag or a repository alone names whatever a registry serves."""
    if policy.containers is None:
        return []
    findings = []
    rule = _rule(policy, CONTAINERS_RULE)
    for entry in entries:
        r = entry.record
        if not r.image_digest:
            why = f"has no image digest ({r.runtime} did not report one), which {rule} requires"
        elif not image_allowed(policy, r.image, r.image_digest):
            why = f"({r.image_digest[:19]}..) is not allowed by {rule}"
        else:
            continue
        message = (
            f"container log entry {entry.index}: {r.namespace}/{r.pod} container {r.container!r} "
            f"image {r.image!r} {why}"
        )
        findings.append(
            Finding(Reason.POLICY_IMAGE_NOT_ALLOWED, message, CONTAINERS_RULE, CONTAINER_PCR, entry.index)
        )
    return findings


# --- generation ----------------------------------------------------------------------------


def create_policy(
    name: str,
    log: EventLog,
    pcrs: Mapping[str, Mapping[int, bytes]],
    ima_entries: Sequence[ImaEntry] = (),
    *,
    with_ima: bool = False,
) -> Policy:
    """A policy that the given known-good evidence satisfies, as tight as the evidence allows.

    `pcrs` are the replayed values of the log (PINNED_PCRS are pinned from them)."""
    bank = "sha256" if "sha256" in pcrs else next(iter(pcrs))
    events = [e for e in log.events if e.type != int(EventType.EV_NO_ACTION)]
    state = secure_boot_state(events)

    def digests(selected: Iterable[Event]) -> frozenset[str]:
        return frozenset(e.digests[bank].hex() for e in selected if bank in e.digests)

    cmdlines = frozenset(c for c in (_grub_cmdline(e) for e in events) if c is not None)
    boot = BootPolicy(
        pcrs={p: frozenset({pcrs[bank][p].hex()}) for p in PINNED_PCRS if p in pcrs[bank]},
        secure_boot=state.enabled is True,
        pk=state.keys.get("PK") if state.enabled else None,
        kek=state.keys.get("KEK") if state.enabled else None,
        db=state.keys.get("db") if state.enabled else None,
        dbx_includes=state.keys.get("dbx") if state.enabled else None,
        efi_applications=digests(e for e in events if e.type == _APP_TYPE),
        efi_drivers=digests(e for e in events if e.type in _DRIVER_TYPES),
        event_digests={
            p: digests(e for e in events if e.pcr == p) for p in (8, 9) if any(e.pcr == p for e in events)
        },
        kernel_cmdline=cmdlines or None,
    )
    ima = None
    if with_ima:
        allow: dict[str, set[str]] = {}
        for entry in ima_entries:
            if entry.violation or (entry.index == 0 and entry.path == BOOT_AGGREGATE) or entry.digest is None:
                continue
            allow.setdefault(entry.path or "", set()).add(f"{entry.digest_alg}:{entry.digest.hex()}")
        ima = ImaPolicy(allow={p: frozenset(v) for p, v in allow.items()})
    return Policy(name=name, bank=bank, allow_sha1=bank == "sha1", boot=boot, ima=ima)

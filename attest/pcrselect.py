"""PCR selections: which PCRs of which banks a challenge asks for, as text and as data.

The text form is tpm2-tools' ("sha256:0-7,23+sha1:0,1"), so operators can copy selections
between this project and tpm2_quote / tpm2_pcrread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from attest.tcg import PCR_COUNT, hash_alg


@dataclass(frozen=True)
class PcrSelection:
    """Banks in a fixed order, each with its sorted PCR indices."""

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, banks: Mapping[str, Iterable[int]]) -> PcrSelection:
        out: list[tuple[str, tuple[int, ...]]] = []
        seen: set[str] = set()
        for name, pcrs in banks.items():
            try:
                bank = hash_alg(name).name
            except KeyError:
                raise ValueError(f"unknown PCR bank {name!r}") from None
            if bank in seen:
                raise ValueError(f"bank {bank} selected twice")
            seen.add(bank)
            indices = sorted(set(pcrs))
            for p in indices:
                if not 0 <= p < PCR_COUNT:
                    raise ValueError(f"PCR {p} out of range 0-{PCR_COUNT - 1}")
            if not indices:
                raise ValueError(f"bank {bank} selects no PCR")
            out.append((bank, tuple(indices)))
        if not out:
            raise ValueError("empty PCR selection")
        return cls(tuple(out))

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Parse "sha256:0-7,23+sha1:0,1" into a selection; ValueError with the reason otherwise."""
        banks: dict[str, list[int]] = {}
        for part in text.strip().split("+"):
            name, sep, spec = part.partition(":")
            if not sep or not spec:
                raise ValueError(f"{part!r}: expected BANK:PCRS, e.g. sha256:0-7,23")
            if name.lower() in banks:
                raise ValueError(f"bank {name} selected twice")
            pcrs: list[int] = []
            for item in spec.split(","):
                lo, dash, hi = item.partition("-")
                try:
                    first, last = int(lo), int(hi if dash else lo)
                except ValueError:
                    raise ValueError(f"{item!r}: not a PCR number or range") from None
                if first > last:
                    raise ValueError(f"{item!r}: empty range")
                pcrs.extend(range(first, last + 1))
            banks[name.lower()] = pcrs
        return cls.of(banks)

    def __str__(self) -> str:
        return "+".join(f"{bank}:{','.join(str(p) for p in pcrs)}" for bank, pcrs in self.banks)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """Every (bank, pcr) pair in quote order: banks as listed, PCRs ascending."""
        for bank, pcrs in self.banks:
            for p in pcrs:
                yield bank, p

    def bank_names(self) -> tuple[str, ...]:
        return tuple(bank for bank, _ in self.banks)

    def as_dict(self) -> dict[str, list[int]]:
        return {bank: list(pcrs) for bank, pcrs in self.banks}

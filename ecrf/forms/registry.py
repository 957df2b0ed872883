"""The registry of CRF definitions and the visit schedule, validated when the app starts.

Every module in ``ecrf.forms.crfs`` (or the modules named by ``CRF_MODULES``) declares
``DEFINITION`` (the current version) and may keep ``PREVIOUS`` (older versions, which data entered
against them keep using). A bad definition stops the app with a message naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from dataclasses import dataclass, field

from ecrf.forms.definition import CRF, DefinitionError


@dataclass
class Registry:
    crfs: dict[str, dict[int, CRF]] = field(default_factory=dict)
    schedule: object = None  # ecrf.study.schedule.Schedule

    def add(self, crf: CRF) -> None:
        versions = self.crfs.setdefault(crf.key, {})
        if crf.version in versions:
            raise DefinitionError(f"CRF {crf.key!r} version {crf.version} is declared twice")
        versions[crf.version] = crf

    def current(self, key: str) -> CRF:
        try:
            versions = self.crfs[key]
        except KeyError:
            raise KeyError(f"no CRF {key!r}") from None
        return versions[max(versions)]

    def version(self, key: str, version: int) -> CRF:
        return self.crfs[key][version]

    def validate(self) -> None:
        oids: dict[str, str] = {}
        for key, versions in self.crfs.items():
            for crf in versions.values():
                crf.validate()
                owner = oids.setdefault(crf.oid, key)
                if owner != key:
                    raise DefinitionError(f"CRF {key!r}: OID {crf.oid} is already used by {owner!r}")
        if self.schedule is not None:
            self.schedule.validate(set(self.crfs))

    def fingerprint(self, settings: dict) -> tuple[str, dict]:
        """A hash over every definition and the study settings, with their versions."""
        versions = {k: sorted(v) for k, v in sorted(self.crfs.items())}
        text = "\n".join(crf.fingerprint() for k in sorted(self.crfs)
                         for crf in (self.crfs[k][v] for v in sorted(self.crfs[k])))
        text += "\n" + json.dumps(settings, sort_keys=True, default=str)
        if self.schedule is not None:
            text += "\n" + self.schedule.fingerprint()
        return hashlib.sha256(text.encode()).hexdigest(), versions


def load(module_names: list[str] | None, schedule, extra: list[str] | tuple = ()) -> Registry:
    """Import the CRF modules (default: every module of ecrf.forms.crfs, plus ``extra``) and
    build a validated registry."""
    if module_names is None:
        package = importlib.import_module("ecrf.forms.crfs")
        module_names = [f"ecrf.forms.crfs.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    module_names = [*module_names, *extra]
    registry = Registry(schedule=schedule)
    for name in module_names:
        module = importlib.import_module(name)
        definition = getattr(module, "DEFINITION", None)
        if not isinstance(definition, CRF):
            raise DefinitionError(f"module {name} declares no DEFINITION")
        for crf in (definition, *getattr(module, "PREVIOUS", ())):
            registry.add(crf)
    registry.validate()
    return registry

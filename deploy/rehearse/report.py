"""Findings, grouped by phase, printed as they come and written to report.md and report.json."""
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

from . import platform

LEVELS = ("PASS", "INFO", "WARN", "FAIL")


@dataclass
class Finding:
    phase: str
    level: str        # PASS, INFO (nothing to change), WARN (works, but mind it), FAIL (the platform would fail it)
    check: str        # what was checked, e.g. "POST /embeddings: latency"
    measured: str     # what this run saw
    rule: str = ""    # the platform rule, in its words (platform.RULES)
    fix: str = ""     # what to change, where the level is WARN or FAIL


class Report:
    def __init__(self, out=sys.stdout):
        self.findings, self.phases, self.out = [], [], out
        self._phase, self._started = None, None

    def phase(self, name):
        self._end_phase()
        self._phase, self._started = name, time.monotonic()
        self.out.write(f"rehearse: [{len(self.phases) + 1}] {name} ...\n")
        self.out.flush()

    def _end_phase(self):
        if self._phase is not None:
            self.phases.append({"phase": self._phase, "seconds": round(time.monotonic() - self._started, 1)})
            self._phase = None

    def add(self, level, check, measured, rule="", fix=""):
        assert level in LEVELS, level
        f = Finding(self._phase, level, check, str(measured), platform.RULES.get(rule, rule), fix)
        self.findings.append(f)
        self.out.write(f"  {level:4}  {check}: {f.measured}\n")
        if level in ("WARN", "FAIL"):
            if f.rule:
                self.out.write(f"        rule: {f.rule}\n")
            if f.fix:
                self.out.write(f"        fix:  {f.fix}\n")
        self.out.flush()
        return f

    @property
    def failed(self):
        return any(f.level == "FAIL" for f in self.findings)

    def counts(self):
        return {level: sum(f.level == level for f in self.findings) for level in LEVELS}

    def finish(self, directory, target):
        self._end_phase()
        os.makedirs(directory, exist_ok=True)
        counts = self.counts()
        verdict = "FAIL" if self.failed else "PASS"
        doc = {"target": target, "verdict": verdict, "counts": counts, "phases": self.phases,
               "findings": [asdict(f) for f in self.findings]}
        with open(os.path.join(directory, "report.json"), "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        with open(os.path.join(directory, "report.md"), "w") as f:
            f.write(self.markdown(doc))
        summary = ", ".join(f"{n} {level}" for level, n in counts.items() if n)
        self.out.write(f"rehearse: {verdict} ({summary}); report in {directory}/report.md and report.json\n")
        return doc

    @staticmethod
    def markdown(doc):
        lines = [f"# Rehearsal: {doc['verdict']}", "", f"{doc['target']}", "",
                 " · ".join(f"{n} {level}" for level, n in doc["counts"].items()), ""]
        for p in doc["phases"]:
            lines += [f"## {p['phase']} ({p['seconds']} s)", "", "| | check | measured | rule | fix |",
                      "| --- | --- | --- | --- | --- |"]
            for f in doc["findings"]:
                if f["phase"] == p["phase"]:
                    cells = [f["level"], f["check"], f["measured"], f["rule"], f["fix"]]
                    lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
            lines.append("")
        return "\n".join(lines)

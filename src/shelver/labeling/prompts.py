"""Prompts are versioned files (``shelver/prompts/<name>.txt``); the version goes with every label.

A prompt file has a ``[system]`` and a ``[user]`` section. In a labeling prompt ``{query}`` and
``{candidates}`` are replaced (plain replacement, so JSON braces in the text need no escaping); the
synthesis prompt (``synthesize_v1``) is filled by ``shelver.synthesis.generators.LLMGenerator``. The
version is ``<name>@<first 8 hex of the text's SHA-256>``: editing a file in place still changes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shelver.errors import ConfigError
from shelver.taxonomy import Path_, format_path

DEFAULT_PROMPT = "label_v1"
# what a labeling prompt's [user] section must contain (``messages`` fills it)
LABEL_PLACEHOLDERS = ("{query}",)
SECTIONS = ("[system]", "[user]")


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    digest: str

    @property
    def version(self) -> str:
        return f"{self.name}@{self.digest[:8]}"

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_PROMPT, needs: tuple[str, ...] = LABEL_PLACEHOLDERS) -> Prompt:
        """A built-in prompt by name (``label_v1``) or any prompt file by path; its [user] section
        must contain each of ``needs``."""
        path = Path(name_or_path)
        if path.suffix == ".txt" and path.is_file():
            return cls.parse(path.stem, path.read_text(encoding="utf-8"), str(path), needs)
        source = resources.files("shelver") / "prompts" / f"{name_or_path}.txt"
        if not source.is_file():
            raise ConfigError(
                f"no prompt {name_or_path!r}: give a built-in name ({builtin_names()}) or a .txt path"
            )
        return cls.parse(name_or_path, source.read_text(encoding="utf-8"), name_or_path, needs)

    @classmethod
    def parse(cls, name: str, text: str, origin: str, needs: tuple[str, ...] = LABEL_PLACEHOLDERS) -> Prompt:
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        body = "\n".join(lines)
        if not all(s in body for s in SECTIONS) or body.index(SECTIONS[0]) > body.index(SECTIONS[1]):
            raise ConfigError(f"prompt {origin}: needs a [system] section followed by a [user] section")
        system, user = body.split(SECTIONS[1], 1)
        system = system.split(SECTIONS[0], 1)[1]
        for placeholder in needs:
            if placeholder not in user:
                raise ConfigError(f"prompt {origin}: the [user] section must contain {placeholder}")
        digest = hashlib.sha256(text.encode()).hexdigest()
        return cls(name, system.strip(), user.strip(), digest)

    def messages(self, query: str, candidates: tuple[Path_, ...]) -> tuple[dict[str, str], ...]:
        listing = "\n".join(f"- {format_path(p)}" for p in candidates)
        user = self.user.replace("{candidates}", listing).replace("{query}", query)
        return ({"role": "system", "content": self.system}, {"role": "user", "content": user})


def builtin_names() -> str:
    folder = resources.files("shelver") / "prompts"
    return ", ".join(sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt")))

"""The ``shelver`` group and what its commands share: error handling, offline defaults, common options."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from shelver.errors import ShelverError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ShelverGroup(click.Group):
    """Turns library errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ShelverError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=ShelverGroup)
@click.version_option(package_name="shelver")
def main() -> None:
    """Put every search query on the right shelf of a category > subcategory taxonomy."""


class ConfigOption(click.Option):
    """An option that mirrors a configuration key of a ``section`` of shelver.config (TrainConfig,
    or a stage such as SynthesizeStage): its default is the dataclass default (one home; a test
    pins every ConfigOption to it), and only a value given on the command line overrides the key,
    so a config file's value is never replaced by a default."""

    def __init__(self, *args: object, config_key: str, section: type | None = None, **kwargs: object) -> None:
        from shelver.config import TrainConfig, config_default

        self.config_key = config_key
        self.section = section or TrainConfig
        kwargs.setdefault("default", config_default(config_key, self.section))
        kwargs.setdefault("show_default", True)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def stage_option(section: type, key: str, *decls: str, **kwargs: object) -> Callable:
    """``click.option`` mirroring ``section.key`` (``--key-with-dashes`` unless ``decls`` names it)."""
    flags = decls or ("--" + key.replace("_", "-"), key)
    return click.option(*flags, cls=ConfigOption, config_key=key, section=section, **kwargs)


def given_overrides(ctx: click.Context) -> tuple[str, ...]:
    """``key=value`` for each ConfigOption the user gave on the command line (TOML values)."""
    out = []
    for param in ctx.command.params:
        given = ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE
        if isinstance(param, ConfigOption) and given:
            out.append(f"{param.config_key}={_toml_value(ctx.params[param.name])}")
    return tuple(out)


def _toml_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
# options several commands share, spelled once
taxonomy_option = click.option(
    "--taxonomy", "taxonomy_path", required=True, type=existing_file, help="Taxonomy (.json/.yaml/.txt)."
)
model_option = click.option(
    "--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory."
)
train_option = click.option(
    "--train", "train_path", required=True, type=existing_file, help="Labeled training data."
)


def labeling_backend_options(command: Callable) -> Callable:
    """--backend/--model/--base-url/--option, shared by 'shelver label' and 'shelver bootstrap'."""
    for option in reversed(
        [
            click.option(
                "--backend",
                "backends",
                multiple=True,
                metavar="NAME[=MODEL]",
                help="embedding (default, offline) | openai | llamacpp | fake. Repeat to vote.",
            ),
            click.option(
                "--model",
                help="Model of the LLM backend(s): a name for openai, a GGUF path or "
                "'smollm2'/'qwen2.5-coder-1.5b' for llamacpp.",
            ),
            click.option("--base-url", help="openai backend: the endpoint, e.g. http://127.0.0.1:8080/v1."),
            click.option(
                "--option",
                "options",
                multiple=True,
                metavar="[BACKEND.]KEY=VALUE",
                help="Backend option, e.g. openai.structured=none, llamacpp.n_threads=2, "
                "embedding.min_similarity=0.3.",
            ),
        ]
    ):
        command = option(command)
    return command

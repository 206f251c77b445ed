"""Sub-command groups brought by plugins: each ``cli.<name>`` entry of the registry is
``convergence <name> ...``.

Lazy and robust on purpose: the names (and the one-line help) come from the entry
points' metadata, so ``convergence --help`` imports no plugin; a plugin's module is
imported only when its group is invoked (``convergence <name> ...``, including
``convergence <name> --help``). A plugin that fails to import, or whose object is not a
Typer app, fails that invocation alone with an error naming its distribution and entry
point (exit code 2); ``--help`` and every other command keep working. A ``cli.<name>``
that is already a built-in command is ignored and listed as a problem by
``convergence plugins``.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from convergence.cli.common import err


class PluginCommand(TyperCommand):
    """What ``--help`` lists for a plugin's group before anything of the plugin is imported."""

    def __init__(self, name: str, distribution: str, version: str) -> None:
        super().__init__(name, help=f"Commands of the plugin {distribution} {version} "
                                    f"(convergence {name} --help lists them).")
        self.distribution = distribution
        self.version = version

    def load(self) -> TyperGroup:
        """The plugin's real group: its module is imported now. Raises :class:`PluginError`."""
        from convergence.registry import registry

        entry = registry().get("cli", self.name or "")
        return as_command(entry.load(), entry)


def as_command(obj: Any, entry: Any) -> TyperGroup:
    """A ``typer.Typer`` app, or a factory returning one, as the group ``convergence <name> <command>``
    (even with one command)."""
    from convergence.registry import PluginError

    if not isinstance(obj, typer.Typer) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - a plugin's factory failing fails its group alone, with its name
            raise PluginError(f"cli {entry.name!r} from {entry._who()}: the factory raised "
                              f"{type(exc).__name__}: {exc}") from None
    if isinstance(obj, typer.Typer):
        return typer.main.get_group(obj)
    raise PluginError(f"cli {entry.name!r} from {entry._who()}: is a {type(obj).__name__}, not a typer.Typer app "
                      f"(or a factory returning one); see docs/plugins.md")


class CoreGroup(TyperGroup):
    """The ``convergence`` group: the built-in commands, then one group per ``cli.*`` plugin entry."""

    def _plugins(self) -> dict[str, PluginCommand]:
        from convergence.registry import registry

        return {e.name: PluginCommand(e.name, e.distribution, e.version)
                for e in registry().entries("cli") if e.name not in self.commands}

    def plugin_problems(self) -> list[str]:
        """``cli.*`` entries that cannot be added: their name is a built-in command."""
        from convergence.registry import registry

        return [f"distribution {e.distribution} {e.version}, entry point 'cli.{e.name}' = {e.spec!r}: "
                f"{e.name!r} is a built-in command; this one is ignored (rename the entry point)"
                for e in registry().entries("cli") if e.name in self.commands]

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *self._plugins()]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return super().get_command(ctx, cmd_name) or self._plugins().get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if isinstance(cmd, PluginCommand):
            from convergence.registry import PluginError

            try:
                cmd = cmd.load()
            except PluginError as exc:
                err.print(f"[red]error:[/] the command group {escape(cmd.name or '')!r} cannot be loaded: "
                          f"{escape(str(exc))}", highlight=False)
                raise typer.Exit(2) from None
        return name, cmd, rest

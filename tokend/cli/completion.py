"""`tokend completion bash|zsh|fish`: shell completion scripts generated from tokend's own argparse parser.

The parser is read once into a table: for each command path (`""`, `"felloh"`, `"felloh keys"`) its
subcommands and options, and for each option that takes a value, what it takes (a list of words, a file,
or anything). Each shell gets the same table as functions of its own, plus a small fixed driver that walks
the words typed so far to find the command path. Nothing is kept by hand: a new command or option is in
the next script generated.

Provider names (`tokend get <TAB>`, `--provider <TAB>`) come from the config file itself, read by the shell
with sed: the `[providers.NAME]` headers of the file `--config` names, or of the first tokend would find. No
Python starts for them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

__all__ = ["SHELLS", "completion_script"]

SHELLS = ("bash", "zsh", "fish")

_FILE, _ANY, _PROVIDER = "@file", "@any", "@provider"
# A [providers.NAME] header line, NAME bare (a quoted name is left out), as sed prints its NAME.
_PROVIDER_HEADER = r"s/^[[:space:]]*\[providers\.\([A-Za-z0-9_-]*\)\][[:space:]]*\(#.*\)\{0,1\}$/\1/p"
_FILE_METAVARS = {"PATH", "FILE"}


@dataclass
class _Command:
    commands: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)  # subcommands, positional choices and options
    values: dict[str, list[str]] = field(default_factory=dict)  # option -> its words, [_FILE] or [_ANY]
    providers: bool = False  # its positional argument is a provider's name


def _table(parser: argparse.ArgumentParser) -> dict[str, _Command]:
    table: dict[str, _Command] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        command = table[path] = _Command()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    command.commands.append(name)
                    walk(sub, f"{path} {name}".strip())
            elif action.option_strings:
                command.words += action.option_strings
                if action.nargs != 0:
                    values = [str(choice) for choice in action.choices] if action.choices else (
                        [_FILE] if action.metavar in _FILE_METAVARS else
                        [_PROVIDER] if action.dest == "provider" else [_ANY])
                    command.values.update(dict.fromkeys(action.option_strings, values))
            elif action.choices:
                command.words += [str(choice) for choice in action.choices]
            elif action.dest == "name":
                command.providers = True
        command.words[:0] = command.commands

    walk(parser, "")
    return table


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (one of SHELLS), for the command named by `parser.prog`."""
    table = _table(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](parser.prog, table)


def _posix_tables(prog: str, table: dict[str, _Command]) -> str:
    """The table as shell functions that bash and zsh both read: case statements echoing words."""
    name = _function_name(prog)
    words = "".join(f'        "{path}") echo "{" ".join(c.words)}{_posix_names(name, c)}";;\n'
                    for path, c in table.items())
    commands = "".join(f'        "{path}") echo "{" ".join(c.commands)}";;\n'
                       for path, c in table.items() if c.commands)
    values = "".join(f'        "{path}|{option}") echo "{" ".join(v)}";;\n'
                     for path, c in table.items() for option, v in c.values.items())
    return (f"_{name}_words() {{  # $1: a command path; its subcommands and options\n"
            f'    case "$1" in\n{words}    esac\n}}\n'
            f"_{name}_commands() {{  # $1: a command path; its subcommands\n"
            f'    case "$1" in\n{commands}    esac\n}}\n'
            f"_{name}_value() {{  # $1: a command path, $2: an option; what its value is (nothing: a flag)\n"
            f'    case "$1|$2" in\n{values}    esac\n}}\n'
            f"_{name}_providers() {{  # the [providers.NAME] of --config's file ($config), else the one {prog} finds\n"
            f'    local file="${{config:-${{TOKEND_CONFIG:-}}}}" place\n'
            f'    if [[ -z "$file" ]]; then\n'
            f'        for place in ./tokend.toml "${{XDG_CONFIG_HOME:-/nonexistent}}/tokend/config.toml" \\\n'
            f'                     "$HOME/.config/tokend/config.toml" /etc/tokend/config.toml; do\n'
            f'            if [[ -f "$place" ]]; then file="$place"; break; fi\n'
            f"        done\n"
            f"    fi\n"
            f"    [[ -r \"$file\" ]] && sed -n '{_PROVIDER_HEADER}' \"$file\"\n"
            f"}}\n")


def _posix_names(name: str, command: _Command) -> str:
    return f" $(_{name}_providers)" if command.providers else ""


def _posix_walk(prog: str, words: str, current: str, commands: str) -> str:
    """The loop bash and zsh share: from the words typed before the cursor (`words`, up to index `current`), the
    command path, skipping each option's value; then `value`: what the word before the cursor takes."""
    name = _function_name(prog)
    return f"""\
    while (( i < {current} )); do
        word="${{{words}[i]}}"
        if [[ "$word" == "--" ]]; then  # `{prog} exec -- COMMAND`: a command of the system's
            {commands}
            return
        fi
        value="$(_{name}_value "$cmdpath" "$word")"
        if [[ -n "$value" ]]; then
            [[ "$word" == "--config" ]] && config="${{{words}[i+1]}}"
            (( i += 2 ))  # an option and its value
            continue
        fi
        if [[ " $(_{name}_commands "$cmdpath") " == *" $word "* ]]; then
            cmdpath="${{cmdpath:+$cmdpath }}$word"
        fi
        (( i += 1 ))
    done
    value="$(_{name}_value "$cmdpath" "${{{words}[{current}-1]}}")"
"""


def _bash(prog: str, table: dict[str, _Command]) -> str:
    name = _function_name(prog)
    return f"""\
# bash completion for {prog}, generated from its own command line by `{prog} completion bash`.
# Load it with `source <({prog} completion bash)` in ~/.bashrc, or save it as
# ~/.local/share/bash-completion/completions/{prog}.
{_posix_tables(prog, table)}
_{name}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmdpath="" config="" word value i=1
    COMPREPLY=()
{_posix_walk(prog, "COMP_WORDS", "COMP_CWORD", 'COMPREPLY=($(compgen -c -- "$cur"))')}    case "$value" in
        "") COMPREPLY=($(compgen -W "$(_{name}_words "$cmdpath")" -- "$cur")) ;;
        {_FILE}) COMPREPLY=($(compgen -f -- "$cur")) ;;
        {_PROVIDER}) COMPREPLY=($(compgen -W "$(_{name}_providers)" -- "$cur")) ;;
        {_ANY}) ;;
        *) COMPREPLY=($(compgen -W "$value" -- "$cur")) ;;
    esac
}}
complete -o filenames -F _{name} {prog}
"""


def _zsh(prog: str, table: dict[str, _Command]) -> str:
    name = _function_name(prog)
    return f"""\
#compdef {prog}
# zsh completion for {prog}, generated from its own command line by `{prog} completion zsh`.
# Load it with `source <({prog} completion zsh)` in ~/.zshrc after compinit, or save it as _{prog} in a
# folder of $fpath.
{_posix_tables(prog, table)}
_{name}() {{
    local cur="${{words[CURRENT]}}" cmdpath="" config="" word value
    local -i i=2
{_posix_walk(prog, "words", "CURRENT", "_command_names -e")}    case "$value" in
        "") compadd -- ${{=$(_{name}_words "$cmdpath")}} ;;
        {_FILE}) _files ;;
        {_PROVIDER}) compadd -- ${{(f)"$(_{name}_providers)"}} ;;
        {_ANY}) _message "a value" ;;
        *) compadd -- ${{=value}} ;;
    esac
}}
if [[ "${{funcstack[1]}}" == "_{prog}" ]]; then
    _{name} "$@"  # autoloaded from $fpath: this file's body is the completion function
else
    compdef _{name} {prog}
fi
"""


def _fish(prog: str, table: dict[str, _Command]) -> str:
    name = _function_name(prog)

    def switch(function: str, comment: str, cases: list[tuple[str, list[str]]]) -> str:
        body = "".join(f"        case '{key}'\n            printf '%s\\n' {' '.join(words)}\n"
                       + (f"            __{name}_providers $argv[2]\n" if table.get(key) and table[key].providers
                          and function == "words" else "")
                       for key, words in cases)
        return f"function __{name}_{function}  # {comment}\n    switch \"$argv[1]\"\n{body}    end\nend\n"

    tables = (
        switch("words", "$argv[1]: a command path; its subcommands and options",
               [(path, c.words) for path, c in table.items()])
        + switch("commands", "$argv[1]: a command path; its subcommands",
                 [(path, c.commands) for path, c in table.items() if c.commands])
        + switch("value", "$argv[1]: 'path|option'; what the option's value is (nothing: a flag)",
                 [(f"{path}|{option}", v) for path, c in table.items() for option, v in c.values.items()])
    )
    providers = f"""\
function __{name}_providers  # the [providers.NAME] of the config: --config's ($argv[1]), else as {prog} finds it
    set -l file $argv[1]
    test -n "$file"; or set file $TOKEND_CONFIG
    if test -z "$file"
        for place in ./tokend.toml $XDG_CONFIG_HOME/tokend/config.toml ~/.config/tokend/config.toml \\
                /etc/tokend/config.toml
            if test -f $place
                set file $place
                break
            end
        end
    end
    test -n "$file"; and test -r "$file"; and sed -n '{_PROVIDER_HEADER}' $file
end
"""
    return f"""\
# fish completion for {prog}, generated from its own command line by `{prog} completion fish`.
# Load it with `{prog} completion fish | source`, or save it as ~/.config/fish/completions/{prog}.fish.
{tables}{providers}
function __{name}_complete
    set -l typed (commandline -opc)
    set -l cur (commandline -ct)
    set -l cmdpath ''
    set -l config ''
    set -l i 2
    while test $i -le (count $typed)
        set -l word $typed[$i]
        if test "$word" = '--'  # `{prog} exec -- COMMAND`: a command of the system's
            complete -C "$cur"
            return
        end
        if test -n "$(__{name}_value "$cmdpath|$word")"
            if test "$word" = '--config'; and test $i -lt (count $typed)
                set config $typed[(math $i + 1)]
            end
            set i (math $i + 2)  # an option and its value
            continue
        end
        if contains -- $word (__{name}_commands "$cmdpath")
            set cmdpath (string trim -- "$cmdpath $word")
        end
        set i (math $i + 1)
    end
    set -l value (__{name}_value "$cmdpath|$typed[-1]")
    switch "$value[1]"
        case ''
            __{name}_words "$cmdpath" "$config"
        case '{_FILE}'
            __fish_complete_path "$cur"
        case '{_PROVIDER}'
            __{name}_providers "$config"
        case '{_ANY}'
        case '*'
            printf '%s\\n' $value
    end
end
complete -c {prog} -f -a '(__{name}_complete)'
"""


def _function_name(prog: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in prog)

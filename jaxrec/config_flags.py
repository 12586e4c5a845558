"""The command-line face of the configuration tree: absl flags generated from config.py's
fields, parsed back into sections, and the --help and README tables listing them.

Entry points define the flags of their own sections only: `main` the `Config` tree,
`recall_cli` RecallConfig and IndexConfig, `serve` ServeConfig and IndexConfig. A flag is
named as its field (or the field's `flag=`) and takes its default, help, bounds and choices;
a bad value is one line and exit 2 (errors.flags_parser), a rule between flags an InputError.
"""

import dataclasses
import types
import typing

from absl import flags

from jaxrec.config import Config, IndexConfig, RecallConfig, ServeConfig, flag_name, flag_text, options
from jaxrec.errors import InputError


def _kind(f: dataclasses.Field):
  """bool, int, float, str, 'ints', 'strs' or 'int?' (an optional integer)."""
  t = f.type
  if typing.get_origin(t) is tuple:
    return "ints" if typing.get_args(t)[0] is int else "strs"
  if isinstance(t, types.UnionType):
    return "int?"
  return t


MAIN_SECTIONS = tuple((f.name, f.type) for f in dataclasses.fields(Config))
RECALL_SECTIONS = (("recall", RecallConfig), ("index", IndexConfig))
SERVE_SECTIONS = (("serve", ServeConfig), ("index", IndexConfig))


def define_flags(sections, flag_values=None) -> None:
  """Defines one absl flag per option of `sections` ((name, class) pairs)."""
  fv = flags.FLAGS if flag_values is None else flag_values
  for _, cls in sections:
    for f in options(cls):
      name, m, kind = flag_name(f), f.metadata, _kind(f)
      args = dict(flag_values=fv, module_name=f"jaxrec.config.{cls.__name__}")
      if kind is bool:
        flags.DEFINE_bool(name, f.default, m["help"], **args)
      elif kind in ("ints", "strs"):
        flags.DEFINE_list(name, [str(v) for v in f.default], m["help"], **args)
      elif kind in (int, "int?"):
        flags.DEFINE_integer(name, f.default, m["help"], lower_bound=m["lower"], upper_bound=m["upper"], **args)
      elif kind is float:
        flags.DEFINE_float(name, f.default, m["help"], lower_bound=m["lower"], upper_bound=m["upper"], **args)
      elif m["choices"]:
        flags.DEFINE_enum(name, f.default, list(m["choices"]), m["help"], **args)
      else:
        flags.DEFINE_string(name, f.default, m["help"], **args)


def _from_flag(f: dataclasses.Field, value):
  if _kind(f) == "ints":
    try:
      return tuple(int(v) for v in value)
    except ValueError:
      raise InputError(f"--{flag_name(f)}={flag_text(value)}: expected integers like "
                       f"{f.metadata['example']}") from None
  if _kind(f) == "strs":
    return tuple(value)
  return value


def sections_from_flags(sections, flag_values=None) -> dict:
  """{section name: section} from parsed flags; raises InputError on a bad value or rule."""
  fv = flags.FLAGS if flag_values is None else flag_values
  return {name: cls(**{f.name: _from_flag(f, fv[flag_name(f)].value) for f in options(cls)})
          for name, cls in sections}


def from_flags(flag_values=None) -> Config:
  """The Config that jaxrec.main's parsed flags describe."""
  return Config(**sections_from_flags(MAIN_SECTIONS, flag_values))


def help_text(sections, program: str) -> str:
  """--help: the flags by section, in the order a user needs them."""
  lines = [f"usage: python -m {program} [--flagfile=FILE] [--flag=value ...]", ""]
  for _, cls in sections:
    lines.append(f"{cls.__doc__.splitlines()[0]}")
    for f in options(cls):
      default = "" if f.default in ("", None, ()) else f"={flag_text(f.default)}"
      choices = f" ({'|'.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
      lines.append(f"  --{flag_name(f)}{default}{choices}")
      lines.append(f"      {f.metadata['help']}")
    lines.append("")
  return "\n".join(lines)


def markdown_table(sections) -> str:
  """README's flag table: one row per flag, a heading row per section."""
  rows = ["| flag | default | what it does |", "| --- | --- | --- |"]
  for _, cls in sections:
    rows.append(f"| **{cls.__doc__.splitlines()[0].rstrip('.')}** | | |")
    for f in options(cls):
      default = flag_text(f.default).replace("|", "\\|")  # a table cell's pipe, escaped even in code
      rows.append(f"| `--{flag_name(f)}` | {f'`{default}`' if default else ''} | "
                  f"{f.metadata['help'].replace('|', '/')} |")
  return "\n".join(rows)


def readme_tables() -> str:
  """The README's flag tables, as `python -m jaxrec.config_flags` prints them."""
  return "\n\n".join([f"`python -m {program}`:\n\n" + markdown_table(sections) for program, sections in
                      (("jaxrec.main", MAIN_SECTIONS), ("jaxrec.recall", RECALL_SECTIONS),
                       ("jaxrec.serve", SERVE_SECTIONS))])


if __name__ == "__main__":
  print(readme_tables())

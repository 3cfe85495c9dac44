"""Offline checks of infra/terraform that need no provider: every file parses as HCL, modules
and examples have the registry's layout with documented variables and outputs, the edge module
provides exactly the variables of spin.toml (the secret ones as sensitive inputs without a
default, the others with spin.toml's defaults), and every checkov skip gives its reason and is
listed in infra/terraform/README.md.

Run by tests/infra/check with python-hcl2; exits non-zero with every problem found.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"
MODULE_FILES = ["main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"]
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")

problems = []


def problem(text):
    problems.append(text)


def unquote(value):
    """python-hcl2 keeps a string literal's quotes: `"x"` is the string x."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def blocks(parsed, kind):
    """{name: body} of the `kind` blocks (variable, output) of a parsed file."""
    found = {}
    for entry in parsed.get(kind, []):
        for name, body in entry.items():
            found[unquote(name)] = body
    return found


def parse_all():
    parsed = {}
    for path in sorted(TERRAFORM.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        try:
            with open(path) as file:
                parsed[path] = hcl2.load(file)
        except Exception as error:  # the parser's errors have no common base
            problem(f"{path.relative_to(ROOT)} does not parse: {error}")
    return parsed


def check_layout(parsed):
    directories = sorted(p for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
    directories += sorted(p for p in (TERRAFORM / "examples").iterdir() if p.is_dir())
    if not (TERRAFORM / "README.md").is_file():
        problem("infra/terraform/README.md is missing")
    for directory in directories:
        for name in MODULE_FILES:
            if not (directory / name).is_file():
                problem(f"{directory.relative_to(ROOT)} has no {name}")
    for path, content in parsed.items():
        where = path.relative_to(ROOT)
        for name, body in blocks(content, "variable").items():
            if not unquote(body.get("description", "")):
                problem(f"{where}: variable {name} has no description")
            if "type" not in body:
                problem(f"{where}: variable {name} has no type")
        for name, body in blocks(content, "output").items():
            if not unquote(body.get("description", "")):
                problem(f"{where}: output {name} has no description")
            # The database's URL holds its password.
            secret = re.search(r"password|secret|token|api_key", name) or (
                name.endswith("url") and path.parent.name == "database"
            )
            if secret and body.get("sensitive") is not True:
                problem(f"{where}: output {name} looks secret but is not sensitive")


def check_edge_against_manifest(parsed):
    manifest = tomllib.loads((ROOT / "spin.toml").read_text())
    declared = manifest["variables"]
    main = parsed[TERRAFORM / "modules" / "edge" / "main.tf"]
    inputs = blocks(parsed[TERRAFORM / "modules" / "edge" / "variables.tf"], "variable")
    local_maps = {}
    for entry in main.get("locals", []):
        local_maps.update(entry)
    plain = local_maps.get("plain_variables", {})
    secret = local_maps.get("secret_variables", {})
    provided = set(plain) | set(secret)
    for name in sorted(set(declared) - provided):
        problem(f"spin.toml's variable {name} is not provided by the edge module")
    for name in sorted(provided - set(declared)):
        problem(f"the edge module provides {name}, which spin.toml does not declare")
    for name in sorted(set(plain) & set(secret)):
        problem(f"the edge module provides {name} both in clear and as a secret")
    for name, spec in sorted(declared.items()):
        is_secret = bool(spec.get("secret"))
        if is_secret and name in plain:
            problem(f"{name} is a secret in spin.toml but the edge module passes it in clear")
        if not is_secret and name in secret:
            problem(f"{name} is not a secret in spin.toml but the edge module keeps it in the secret")
        source = plain.get(name) or secret.get(name)
        if source is None:
            continue
        expected = {f"${{var.{name}}}", f"${{tostring(var.{name})}}"}
        if source not in expected:
            problem(f"the edge module sets {name} from {source}, not from var.{name}")
            continue
        variable = inputs.get(name)
        if variable is None:
            problem(f"the edge module has no input variable {name}")
            continue
        if is_secret:
            if variable.get("sensitive") is not True:
                problem(f"the edge module's input {name} is a secret but not sensitive")
            if "default" in variable:
                problem(f"the edge module's input {name} is a secret with a default")
        elif "default" in spec:
            default = unquote(variable.get("default"))
            if isinstance(default, bool):
                default = "true" if default else "false"
            if default is not None and str(default) != spec["default"]:
                problem(
                    f"the edge module's default of {name} is {default}, spin.toml's is "
                    f"{spec['default']}"
                )


def check_skips():
    readme = (TERRAFORM / "README.md").read_text() if (TERRAFORM / "README.md").is_file() else ""
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = SKIP.search(line)
            if not match:
                continue
            where = f"{path.relative_to(ROOT)}:{number}"
            check, reason = match.group(1), (match.group(2) or "").strip()
            if len(reason) < 20:
                problem(f"{where}: skipping {check} needs its reason")
            if check not in readme:
                problem(f"{where}: {check} is skipped but infra/terraform/README.md does not list it")


def main():
    parsed = parse_all()
    check_layout(parsed)
    check_edge_against_manifest(parsed)
    check_skips()
    for text in problems:
        print(f"infra: {text}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"infra: {len(parsed)} Terraform files parse; the edge module matches spin.toml")


if __name__ == "__main__":
    main()

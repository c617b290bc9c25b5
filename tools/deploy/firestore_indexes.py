"""Deploy the Firestore composite indexes and field exemptions of a firestore.indexes.json.

    python3 tools/deploy/firestore_indexes.py FILE --project P [--database D] [--dry-run]

Why not ``firebase deploy --only firestore:indexes``: that needs the Firebase CLI and a
Firebase project link; ``gcloud`` is already on the deploy runner. The file keeps the Firebase
CLI's format (``indexes`` + ``fieldOverrides``), so either tool can apply it.

Idempotent: the composite indexes that exist are listed first and only missing ones are
created. Indexes present in the project but not in the file are reported, never deleted: an
older revision deployed for a rollback must not drop an index the newer code still needs.
``create`` runs without ``--async``, so the deploy waits until the index is built, before the
service that queries it rolls out. Field exemptions (``"indexes": []``) switch off the
single-field indexes of large fields (prompt, params, media): ``fields update`` is idempotent.

Stdlib only: it runs on the deploy runner's system Python, outside Pants.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

Index = tuple[str, str, tuple[tuple[str, str], ...]]  # (collection group, scope, fields)


def _field_key(field: dict[str, Any]) -> tuple[str, str]:
    if "order" in field:
        return field["fieldPath"], str(field["order"]).upper()
    if "arrayConfig" in field:
        return field["fieldPath"], "ARRAY_" + str(field["arrayConfig"]).upper()
    raise ValueError(f"field {field!r} has neither order nor arrayConfig")


def wanted_indexes(spec: dict[str, Any]) -> list[Index]:
    """The composite indexes of a firestore.indexes.json document."""
    found = []
    for index in spec.get("indexes", []):
        fields = tuple(_field_key(f) for f in index["fields"])
        if len(fields) < 2:
            raise ValueError(f"{index!r}: a composite index needs at least two fields")
        found.append((index["collectionGroup"], index.get("queryScope", "COLLECTION"), fields))
    return found


def existing_indexes(listing: list[dict[str, Any]]) -> set[Index]:
    """Indexes from ``gcloud firestore indexes composite list --format=json``. The API appends
    ``__name__`` to every index (the implicit tie-break); the file does not list it."""
    found = set()
    for index in listing:
        # name: projects/P/databases/D/collectionGroups/CG/indexes/ID
        group = index["name"].split("/collectionGroups/")[1].split("/")[0]
        fields = tuple(_field_key(f) for f in index["fields"] if f["fieldPath"] != "__name__")
        found.add((group, index.get("queryScope", "COLLECTION"), fields))
    return found


def create_command(index: Index, project: str, database: str) -> list[str]:
    group, scope, fields = index
    cmd = [
        "gcloud",
        "firestore",
        "indexes",
        "composite",
        "create",
        f"--project={project}",
        f"--database={database}",
        f"--collection-group={group}",
        f"--query-scope={scope.lower().replace('_', '-')}",
    ]
    for path, order in fields:
        if order.startswith("ARRAY_"):
            cmd.append(f"--field-config=field-path={path},array-config={order[6:].lower()}")
        else:
            cmd.append(f"--field-config=field-path={path},order={order.lower()}")
    return cmd


def exemption_commands(spec: dict[str, Any], project: str, database: str) -> list[list[str]]:
    cmds = []
    for override in spec.get("fieldOverrides", []):
        if override.get("indexes") != []:
            raise ValueError(
                f'{override!r}: only exemptions ("indexes": []) are supported; '
                "write other single-field settings here when one is needed"
            )
        cmds.append(
            [
                "gcloud",
                "firestore",
                "indexes",
                "fields",
                "update",
                override["fieldPath"],
                f"--project={project}",
                f"--database={database}",
                f"--collection-group={override['collectionGroup']}",
                "--disable-indexes",
            ]
        )
    return cmds


def _say(cmd: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(cmd), file=sys.stdout if dry_run else sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="firestore_indexes.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--project", required=True)
    parser.add_argument("--database", default="(default)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    args = parser.parse_args(argv)

    try:
        spec = json.loads(args.file.read_text())
        wanted = wanted_indexes(spec)
        exemptions = exemption_commands(spec, args.project, args.database)
    except (OSError, ValueError, KeyError) as exc:
        print(f"firestore_indexes: {args.file}: {exc}", file=sys.stderr)
        return 2

    list_cmd = [
        "gcloud",
        "firestore",
        "indexes",
        "composite",
        "list",
        f"--project={args.project}",
        f"--database={args.database}",
        "--format=json",
    ]
    _say(list_cmd, args.dry_run)
    if args.dry_run:
        existing: set[Index] = set()
    else:
        proc = subprocess.run(list_cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"firestore_indexes: listing failed: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        existing = existing_indexes(json.loads(proc.stdout or "[]"))

    for index in existing - set(wanted):
        print(
            f"firestore_indexes: {index} exists but is not in {args.file} (kept)", file=sys.stderr
        )
    commands = [create_command(i, args.project, args.database) for i in wanted if i not in existing]
    for cmd in [*commands, *exemptions]:
        _say(cmd, args.dry_run)
        if not args.dry_run:
            if subprocess.run(cmd, check=False).returncode != 0:
                print(f"firestore_indexes: failed: {shlex.join(cmd)}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validates CycloneDX JSON SBOMs against the CycloneDX 1.5 schema with the official
library, and checks each describes its binary and lists its dependencies."""

import json
import sys
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def main(paths: list[str]) -> int:
    validator = JsonStrictValidator(SchemaVersion.V1_5)
    failed = 0
    for path in paths:
        text = Path(path).read_text()
        error = validator.validate_str(text)
        bom = json.loads(text)
        components = bom.get("components", [])
        name = bom.get("metadata", {}).get("component", {}).get("name", "?")
        if error is not None:
            print(f"{path}: not valid CycloneDX 1.5: {error}")
            failed += 1
        elif len(components) < 20 or not all(c.get("purl", "").startswith("pkg:cargo/") for c in components):
            print(f"{path}: {len(components)} components, expected the binary's crates with cargo purls")
            failed += 1
        else:
            licensed = sum(1 for c in components if c.get("licenses"))
            print(f"{path}: valid CycloneDX 1.5, {name}, {len(components)} components ({licensed} with a licence)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

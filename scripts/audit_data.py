r"""Leak audit of a built dataset: near-duplicate pairs that cross its splits (the `vaeaug-audit` command).

  python scripts/audit_data.py --dataset=face_mask12k --config=official
  python scripts/audit_data.py --dataset=face_mask12k --config=grouped --json

The command lives in vaeaug/data/audit_cli.py; --help lists its flags.
"""

from vaeaug.data import audit_cli

if __name__ == "__main__":
  audit_cli.run()

"""The lab toolkit shared by the tests, the benchmarks and the demo — never shipped.

Owns nothing of the product: throwaway network namespaces (`netns`), a network of veth
links with listeners and probes (`network`), the real daemon started in a namespace and
waited for (`daemon`), and the one polling helper with a deadline (`wait.until`). It sits
at the repository root next to tests/, benchmarks/ and demo/, outside the `aitherfwd`
package, so the .deb never installs it (pyproject's packages.find includes `aitherfwd*`
only). Import it from the repository root (`python -m demo`, `python -m benchmarks.…`,
pytest).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AITHERFWD = str(ROOT / ".venv" / "bin" / "aitherfwd")

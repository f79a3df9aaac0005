"""Where ``onegen eval`` says it wrote its result (its last line ends ``-> <path>/result.json``)."""

from pathlib import Path


def printed_result(output: str) -> Path:
    path = Path(output.strip().splitlines()[-1].rpartition(" -> ")[2])
    assert path.name == "result.json" and path.is_file(), output
    return path

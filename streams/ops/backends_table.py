"""`qlane backends`: every backend a worker would offer, as a table or as JSON.

Built from the same settings a worker reads (`QLANE_BACKENDS`, `QLANE_IBM_MODE`, the price
table), without a broker. Backends whose extra is missing are listed with `installed: no`
and the extra to install.
"""

from __future__ import annotations

import json

from streams.settings import Settings
from workers.backends.registry import BackendRegistry
from workers.cost.model import load_price_table

COLUMNS = ("name", "vendor", "kind", "qubits", "native gates", "calibration", "calibrated at",
           "price model", "extra")


def backend_rows(settings: Settings) -> list[dict]:
    registry = BackendRegistry(ibm_mode="local", offered=settings.backends)
    prices = load_price_table(settings.prices_file)
    rows = []
    for info in registry.catalog():
        row = info.to_dict()
        try:
            price = prices.price(info.name)
            row["price_model"] = price.describe()
            row["price_source"] = price.source
        except Exception:  # no price: the table says so instead of failing the listing
            row["price_model"], row["price_source"] = "not priced", ""
        rows.append(row)
    return rows


def render_table(rows: list[dict]) -> str:
    cells = []
    for row in rows:
        extra = row["extra"] or "-"
        if row["extra"]:
            extra += " (installed)" if row["installed"] else " (MISSING: pip install " \
                f"'qlane[{row['extra']}]')"
        cells.append((
            row["name"], row["vendor"], row["kind"],
            "-" if row["num_qubits"] is None else str(row["num_qubits"]),
            " ".join(row["native_gates"]) or "-",
            row["calibration_version"] or "-", row["calibrated_at"] or "-",
            row["price_model"], extra,
        ))
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip()
              for c in cells]
    return "\n".join(lines)


def run(settings: Settings, as_json: bool) -> int:
    rows = backend_rows(settings)
    print(json.dumps(rows, indent=2) if as_json else render_table(rows))
    return 0

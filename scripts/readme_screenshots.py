"""README screenshots of a report, taken by headless Chromium from the figures' own pages.

    .venv/bin/python scripts/readme_screenshots.py [TARGET] [--tracking-uri URI] [--out docs/img]

TARGET defaults to the demo study (`make demo` logs it to sqlite:///mlflow.db). Writes
`report.png` (the top of index.html: summary and collapse criteria) and one PNG per figure
kind in `--out`, each cropped to the figure's own height. Needs `chromium` on PATH. Where Pillow
is installed, each PNG is reduced to a 256-colour palette (flat plotly colours survive it; a
screenshot shrinks to about a third), so the README's images stay a few hundred KB in all.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.report.page import make_report  # noqa: E402

FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--enable-unsafe-swiftshader", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", "--virtual-time-budget=15000"]
SHOTS = {"collapse": 900, "trials": 1500, "learning": 700, "parallel": 480, "pair": 540}  # figure -> page height


def shoot(chrome: str, page: Path, png: Path, height: int, profile: Path) -> None:
    subprocess.run([chrome, *FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{height}",
                    f"--screenshot={png}", page.as_uri()], check=True, capture_output=True, timeout=120)


def shrink(png: Path) -> None:
    """Re-save `png` with a 256-colour palette; left as is without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as img:
        small = img.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default="demo")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args()
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chrome is None:
        print("error: no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        index = make_report(args.target, tracking_uri=args.tracking_uri, out_dir=Path(tmp), png=False,
                            log_artifact=False)
        args.out.mkdir(parents=True, exist_ok=True)
        shoot(chrome, index, args.out / "report.png", 1000, Path(tmp) / "profile")
        for name, height in SHOTS.items():
            page = index.with_name(f"{name}.html")
            if page.exists():
                shoot(chrome, page, args.out / f"{name}.png", height, Path(tmp) / f"profile-{name}")
    for png in sorted(args.out.glob("*.png")):
        shrink(png)
        print(f"{png} {png.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

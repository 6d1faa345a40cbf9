"""Settings of the test suite: its own data, media and index directories and Redis database.

The suite may start the embedded servers, in a data dir of its own (kept between runs, so
the PostgreSQL cluster is made once); uploads and BM25 indexes go to a fresh temporary
folder per run. The developer's ``.kms-data`` is never touched (``conftest`` checks).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = Path(tempfile.mkdtemp(prefix="kms-tests-"))
atexit.register(shutil.rmtree, RUN_DIR, ignore_errors=True)
TEST_REDIS_DB = int(os.environ.get("KMS_TEST_REDIS_DB", "15"))

os.environ.setdefault("KMS_DATA_DIR", str(ROOT / ".kms-test-data"))
os.environ.setdefault("KMS_MEDIA_ROOT", str(RUN_DIR / "media"))
os.environ.setdefault("KMS_INDEX_DIR", str(RUN_DIR / "indexes"))
os.environ.setdefault("KMS_MODELS_DIR", str(RUN_DIR / "models"))
os.environ.setdefault("KMS_EMBEDDED", "1")
os.environ.setdefault("DJANGO_HTTPS", "false")
if os.environ.get("REDIS_URL", "").startswith(("redis://", "rediss://")):
    # A given server, but always the suite's own database on it.
    os.environ["REDIS_URL"] = urlunsplit(
        urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{TEST_REDIS_DB}")
    )
elif not os.environ.get("REDIS_URL"):
    from kms import embedded

    os.environ["REDIS_URL"] = embedded.redis_url(
        Path(os.environ["KMS_DATA_DIR"]), db=TEST_REDIS_DB
    )

from kms.settings import *  # noqa: E402, F403

STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise wants it to exist

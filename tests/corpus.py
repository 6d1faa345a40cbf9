"""A small corpus shared by the API, portal and curation tests: healthcare with a document
only ward B may see, a finance domain, and a user of each kind (``make_corpus``; the
``corpus`` fixture of conftest)."""

from __future__ import annotations

from django.contrib.auth.models import Group, User
from django.test import Client

from kms.store.models import Domain
from kms.tokens import issue_token
from search.ingestion.documents import add_document
from search.ingestion.progress import process_inline
from search.retrieval import index_store as bm25_store
from tests.conftest import OPERATOR

DOCUMENTS = {
    "hand-hygiene.md": "# Hand hygiene\n\nStaff clean their hands with alcohol rub for twenty "
    "seconds before and after every patient contact.",
    "metformin.md": "# Metformin\n\nMetformin is the first-line drug for type 2 diabetes. The "
    "usual starting dose is 500 mg once daily.",
}
RESTRICTED = "# Ward B escalation\n\nOn ward B the escalation bleep number for hand hygiene " \
    "audits is 4471."


def make_corpus(domain: Domain, settings, tmp_path) -> dict[str, User]:
    """Healthcare with a ward-B-only document, a finance domain, and one user of each."""
    settings.KMS_INDEX_DIR = tmp_path / "indexes"
    staff, ward_b = Group.objects.create(name="healthcare-staff"), Group.objects.create(
        name="ward-b")
    domain.member_groups.add(staff, ward_b)
    finance = Domain.objects.get_or_create(slug="finance", defaults={"name": "Finance"})[0]
    finance.member_groups.add(accounts := Group.objects.create(name="accounts"))
    ids = [add_document(domain, uploader=OPERATOR, source=name, filename=name,
                        content=body.encode(), queue=False).version_id
           for name, body in DOCUMENTS.items()]
    ids.append(add_document(domain, uploader=OPERATOR, source="ward-b.md", filename="ward-b.md",
                            content=RESTRICTED.encode(), access_groups=[ward_b],
                            queue=False).version_id)
    ids.append(add_document(finance, uploader=OPERATOR, source="expenses.md",
                            filename="expenses.md", content=b"# Expenses\n\nHand hygiene "
                            b"supplies are claimed on form E12.", queue=False).version_id)
    process_inline(ids)
    bm25_store.build_index(domain)
    bm25_store.build_index(finance)
    users = {}
    for name, groups in (("nurse", [staff]), ("ward-b-nurse", [staff, ward_b]),
                         ("accountant", [accounts]), ("nobody", [])):
        users[name] = User.objects.create_user(name, password="pw-" + name)
        users[name].groups.add(*groups)
    return users


def client_for(user: User) -> Client:
    _, secret = issue_token(user, "tests")
    return Client(headers={"Authorization": f"Bearer {secret}"})


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]

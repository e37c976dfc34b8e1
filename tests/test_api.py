"""The HTTP surface: explorer, CORS, GET queries, limits, caches and error shapes."""

from __future__ import annotations

import pytest

from app.settings import DEV_JWT_SECRET, Settings
from app.web.graphql_app import build_schema
from app.web.query_limits import QueryCache
from tests.support import Api


async def test_typename_answers_without_authentication(api: Api) -> None:
    assert await api.data("{ __typename }", as_=None) == {"__typename": "Query"}


async def test_graphiql_offers_examples_and_an_authorization_header(api: Api) -> None:
    response = await api.client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert "initialHeaders" in response.text and "Authorization" in response.text
    assert "mutation Login" in response.text


async def test_get_requests_run_queries(api: Api) -> None:
    response = await api.client.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_the_web_frontend_origin_passes_cors_preflight(api: Api) -> None:
    response = await api.client.options(
        "/graphql",
        headers={
            "origin": "http://localhost:3000",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert response.headers["access-control-allow-credentials"] == "true"
    foreign = await api.client.options(
        "/graphql",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in foreign.headers


async def test_malformed_requests_get_400_with_a_message_not_a_crash(api: Api) -> None:
    broken = await api.client.post(
        "/graphql", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    syntax = await api.post("{ fleets { id ")
    assert syntax.status_code == 400
    assert syntax.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    unknown = await api.post("{ nope }")
    assert unknown.status_code == 400


async def test_wrongly_typed_variables_are_bad_user_input(api: Api) -> None:
    codes = await api.error_codes("query($l: Int) { sepulkas(limit: $l) { id } }", {"l": "many"})
    assert codes == ["BAD_USER_INPUT"]


async def test_deep_queries_are_refused(api: Api) -> None:
    deep = (
        "{ me { id } "
        + "".join("__schema { types { fields { type { ofType {" for _ in range(1))
        + (" name } } } } } }")
    )
    assert await api.error_codes(deep) == []  # depth 6: allowed
    nested = "{ fleets { robots { factoryFloor { robots { factoryFloor { robots { factoryFloor { robots"
    nested += (
        " { factoryFloor { robots { factoryFloor { robots { factoryFloor { id } } } } } } } } } } } } } }"
    )
    response = await api.post(nested, token=await api.token("admin@sepulki.com", "admin123"))
    assert response.status_code == 400
    assert "depth" in response.json()["errors"][0]["message"]


async def test_costly_queries_are_refused(api: Api) -> None:
    # Root lists cost their `limit`: eleven lists of 500 exceed the default budget of 5000.
    aliases = " ".join(f"a{i}: sepulkas(limit: 500) {{ id }}" for i in range(11))
    response = await api.post("{ " + aliases + " }", token=await api.token("admin@sepulki.com", "admin123"))
    assert response.status_code == 400
    assert "cost" in response.json()["errors"][0]["message"].lower()
    affordable = " ".join(f"a{i}: sepulkas(limit: 500) {{ id }}" for i in range(9))
    assert await api.error_codes("{ " + affordable + " }") == []


async def test_negative_limit_is_bad_user_input(api: Api) -> None:
    assert await api.error_codes("{ sepulkas(limit: -1) { id } }") == ["BAD_USER_INPUT"]
    assert await api.error_codes("{ sepulkas(offset: -5) { id } }") == ["BAD_USER_INPUT"]


async def test_lists_default_to_50_and_never_exceed_500(api: Api) -> None:
    await api.resources.db.execute(
        "INSERT INTO loci (name) SELECT 'Site ' || i FROM generate_series(1, 600) AS i"
    )
    default = await api.data("{ loci { id } }")
    assert len(default["loci"]) == 50
    capped = await api.data("{ loci(limit: 600) { id } }")
    assert len(capped["loci"]) == 500


def test_parse_and_validation_are_cached_per_document() -> None:
    schema = build_schema()
    cache = QueryCache(size=2)
    first = cache.parse(None, {"query": "{ __typename }"})
    assert cache.parse(None, {"query": "{ __typename }"}) is first
    assert cache.validate(schema, first) == []
    assert id(first) in cache._errors
    cache.parse(None, {"query": "{ a: __typename }"})
    cache.parse(None, {"query": "{ b: __typename }"})
    assert id(first) not in cache._errors  # evicted with its document


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(RuntimeError, match="SEPULKI_JWT_SECRET"):
        Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": DEV_JWT_SECRET})
    settings = Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": "x" * 40})
    assert settings.production and not settings.seed_on_start


async def test_production_hides_introspection_and_the_explorer(settings: Settings) -> None:

    prod = settings.replace(env="production", jwt_secret="p" * 40)
    async with Api.running(prod) as api:
        page = await api.client.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 405
        response = await api.post("{ __schema { types { name } } }")
        assert response.status_code == 400


FORGE = """
mutation($parameters: JSON) {
  forgeSepulka(input: {name: "Scalar probe", alloyIds: ["20000000-0000-4000-8000-000000000001"],
                       parameters: $parameters}) {
    sepulka { id parameters }
    errors { code field }
  }
}
"""


async def test_json_scalars_accept_objects_and_reject_malformed_json_text(api: Api) -> None:
    as_object = await api.data(FORGE, {"parameters": {"reach": 1.5}})
    assert as_object["forgeSepulka"]["sepulka"]["parameters"] == {"reach": 1.5}
    as_text = await api.data(FORGE, {"parameters": '{"reach": 2.5}'})
    assert as_text["forgeSepulka"]["sepulka"]["parameters"] == {"reach": 2.5}
    broken = await api.post(
        FORGE, {"parameters": '{"reach": '}, token=await api.token("admin@sepulki.com", "admin123")
    )
    assert broken.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert broken.json()["data"] is None
    count = await api.resources.db.fetchval("SELECT count(*) FROM sepulkas WHERE name = 'Scalar probe'")
    assert count == 2


def test_serve_refuses_to_start_in_production_with_the_development_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.cli import main

    monkeypatch.setenv("SEPULKI_ENV", "production")
    monkeypatch.delenv("SEPULKI_JWT_SECRET", raising=False)
    with pytest.raises(SystemExit, match="development secret is refused"):
        main(["serve"])

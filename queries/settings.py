"""Where the database is and how to log in: environment variables (or a `.env` file), never code.

`NEO4J_URI` accepts `bolt://`, `neo4j://` (a cluster, with routing) and `neo4j+s://` (Aura); the default
points at the local server that `circuitshift db start` runs. With no `NEO4J_PASSWORD`, the password that
`db start` generated into the state folder is used.
"""

from __future__ import annotations

import json

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from analysis.errors import UserError
from queries.server.local import default_state_dir

SUPPORTED_SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")


def password_file():
    return default_state_dir() / "neo4j-password"


def local_bolt_uri() -> str:
    """The Bolt URI of the project's local server, following the ports `db start` chose."""
    try:
        run = json.loads((default_state_dir() / "neo4j" / "run" / "server.json").read_text())
        return f"bolt://127.0.0.1:{run['bolt_port']}"
    except (OSError, ValueError, KeyError):
        return "bolt://127.0.0.1:7687"


class Neo4jSettings(BaseSettings):
    """Connection settings, read from `NEO4J_*` environment variables or `.env`."""

    model_config = SettingsConfigDict(env_prefix="NEO4J_", env_file=".env", extra="ignore")

    uri: str = Field(default_factory=local_bolt_uri,
                     description="Bolt URI: bolt://host:port, neo4j://host:port (cluster) or neo4j+s://... (Aura).")
    user: str = Field(default="neo4j", description="Database user.")
    password: SecretStr | None = Field(default=None,
                                       description="Password; defaults to the local server's generated one.")
    database: str = Field(default="neo4j", description="Database name (Community has one user database).")

    def resolved_password(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        path = password_file()
        if path.exists():
            return path.read_text().strip()
        raise UserError("NEO4J_PASSWORD is not set and no local server password exists yet: "
                        "run `circuitshift db start` or export NEO4J_PASSWORD")

    def checked_uri(self) -> str:
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else ""
        if scheme not in SUPPORTED_SCHEMES:
            raise UserError(f"NEO4J_URI {self.uri!r} has an unsupported scheme; use one of "
                            + ", ".join(s + "://" for s in SUPPORTED_SCHEMES))
        return self.uri

"""The OpenAPI 3.1 description of the console's JSON API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], what: str) -> dict[str, Any]:
    errors = {
        "400": "bad input", "401": "not signed in", "403": "the role does not allow it",
        "404": "no such run",
        "409": "nothing waits (decided already), a live process drives the run, or the fork exists already",
        "415": "not JSON",
    }
    return {
        "200": {"description": what, "content": {"application/json": {"schema": schema}}},
        **{code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
           for code, text in errors.items()},
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


PID = {"name": "pid", "in": "path", "required": True, "schema": {"type": "string"}}
SCOPE = {"name": "scope", "in": "path", "required": True, "schema": {"type": "string"}}
OBJECT = {"type": "object"}


def _decision(text: str | None, summary: str) -> dict[str, Any]:
    props: dict[str, Any] = {"by": {"type": "string", "description": "the signed-in user's name, or left out"}}
    required = []
    if text:
        props[text] = {"type": "string", "description": "what the agent is told"}
        required.append(text)
    return {"post": {
        "summary": summary, "parameters": [PID], "tags": ["approvals"],
        "requestBody": _body({"type": "object", "properties": props, "required": required}),
        "responses": _ok(_ref("Decision"), "the recorded decision"),
    }}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Castor console API", "version": "1",
        "description": "Approvals, runs and budget scopes of a Castor store. Sign in with "
                       "'Authorization: Bearer <token>' (a token of [[console.users]]); POST bodies are JSON.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/me": {"get": {"summary": "who the token belongs to", "tags": ["auth"],
                            "responses": _ok(OBJECT, "name, role and tools")}},
        "/api/approvals": {"get": {
            "summary": "calls waiting for a decision, oldest first", "tags": ["approvals"],
            "responses": _ok({"type": "object", "properties": {
                "approvals": {"type": "array", "items": _ref("Approval")}}}, "the queue"),
        }},
        "/api/runs/{pid}/approve": _decision(None, "approve the pending call (approver)"),
        "/api/runs/{pid}/reject": _decision("reason", "reject the pending call with a reason (approver)"),
        "/api/runs/{pid}/modify": _decision("feedback", "answer the pending call with feedback (approver)"),
        "/api/runs": {"get": {
            "summary": "runs, newest first", "tags": ["runs"],
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string"},
                 "description": "running, hitl, completed, preempted or failed"},
                {"name": "agent", "in": "query", "schema": {"type": "string"},
                 "description": "a substring of the agent or pid"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            ],
            "responses": _ok({"type": "object", "properties": {"runs": {"type": "array", "items": OBJECT}}}, "runs"),
        }},
        "/api/runs/{pid}": {"get": {"summary": "a run with its timeline", "parameters": [PID], "tags": ["runs"],
                                    "responses": _ok(_ref("Run"), "the run")}},
        "/api/runs/{pid}/cancel": {"post": {
            "summary": "stop the run (approver)", "parameters": [PID], "tags": ["runs"],
            "responses": _ok(OBJECT, "cancelled, or cancel requested"),
        }},
        "/api/runs/{pid}/fork": {"post": {
            "summary": "a new run from the first at_step steps (approver)", "parameters": [PID], "tags": ["runs"],
            "requestBody": _body({"type": "object", "properties": {"at_step": {"type": "integer", "minimum": 0}},
                                  "required": ["at_step"]}),
            "responses": _ok(OBJECT, "the new pid, and next: what drives it (the fleet, castor resume, or who)"),
        }},
        "/api/scopes": {"get": {"summary": "scopes the newest runs draw from", "tags": ["budgets"],
                                "responses": _ok(OBJECT, "scope names")}},
        "/api/scopes/{scope}": {"get": {"summary": "limit, used and left per resource", "parameters": [SCOPE],
                                        "tags": ["budgets"], "responses": _ok(_ref("Scope"), "the scope")}},
        "/api/scopes/{scope}/top-up": {"post": {
            "summary": "raise the scope's limits (admin)", "parameters": [SCOPE], "tags": ["budgets"],
            "requestBody": _body({"type": "object", "required": ["amounts"], "properties": {
                "amounts": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}}}}),
            "responses": _ok(_ref("Scope"), "the scope after the top-up"),
        }},
        "/api/scopes/{scope}/reset": {"post": {
            "summary": "set the scope's usage back to zero (admin)", "parameters": [SCOPE], "tags": ["budgets"],
            "responses": _ok(_ref("Scope"), "the scope after the reset"),
        }},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
            "Approval": {"type": "object", "properties": {
                "pid": {"type": "string"}, "step": {"type": "integer"}, "tool": {"type": "string"},
                "arguments": {"type": "object", "description": "sensitive values shown as ***"},
                "reason": {"type": "string"}, "age": {"type": "number"}, "agent": {"type": ["string", "null"]},
                "owner": {"type": ["string", "null"]}, "budget": OBJECT, "attempt": {"type": "integer"},
                "created_at": {"type": "number"}}},
            "Decision": {"type": "object", "properties": {
                "pid": {"type": "string"}, "step": {"type": "integer"},
                "outcome": {"enum": ["approve", "reject", "modify"]}, "by": {"type": "string"},
                "reason": {"type": "string"}, "at": {"type": "number"}, "next": {"type": "string"}}},
            "Run": {"type": "object", "properties": {
                "pid": {"type": "string"}, "status": {"type": "string"}, "timeline": {"type": "array", "items": {
                    "type": "object", "properties": {
                        "step": {"type": "integer"}, "tool": {"type": "string"},
                        "kinds": {"type": "array", "items": {
                            "enum": ["live", "replayed", "human", "flagged", "in-doubt", "failed"]}},
                        "decided_by": {"type": ["string", "null"]}}}},
                "pending": {"type": ["object", "null"]}, "budget": OBJECT}},
            "Scope": {"type": "object", "properties": {"scope": {"type": "string"}, "resources": OBJECT}},
        },
    },
}

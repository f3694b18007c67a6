"""One router per resource, each thin: parse, authorise, call a service, return a schema."""

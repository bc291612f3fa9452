package tasks

import "errors"

// Errors the controller returns, wrapped with a message for the client. The
// HTTP API maps each to a status code.
var (
	// ErrNotFound: no task of that name.
	ErrNotFound = errors.New("not found")
	// ErrExists: a task of that name exists already.
	ErrExists = errors.New("already exists")
	// ErrConflict: the request contradicts a task's current state (a
	// different spec for an existing name, a name being deleted).
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the request is well-formed but cannot be carried out
	// (runtime not installed, container mode off, spec refused by its
	// runtime).
	ErrInvalid = errors.New("invalid")
	// ErrUnavailable: a runtime needed to answer is down; try again.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooMany: the host keeps as many tasks as it may.
	ErrTooMany = errors.New("too many tasks")
)

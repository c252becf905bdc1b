package policy

import (
	"errors"
	"fmt"
)

// FieldError is a rule, option or label that could not be understood. Field
// names where the bad input sits (the option or label key, for full JSON
// rules extended with the index and JSON field, e.g.
// "clawker.rules[0].paths[1].path"), Value is the offending text as the user
// wrote it, and Reason says why it was rejected. Its message reads like
//
//	clawker.allow: "exa mple.com": invalid character ' ' in host name
//
// and is meant to be shown to users verbatim (docker network create, docker
// run with authz, the admin API).
type FieldError struct {
	Field  string
	Value  string
	Reason string
	// Err is the underlying cause when there is one (a regular expression
	// that does not compile, a JSON syntax error); Reason already includes
	// its text.
	Err error
}

// Error returns "field: "value": reason" ("field: reason" when there is no value).
func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("%s: %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap returns the underlying cause, if any.
func (e *FieldError) Unwrap() error { return e.Err }

// ruleError is the source-independent form of a validation failure inside
// one rule: the sub-field of a full rule ("port", "paths[0].path"; empty for
// compact items and the destination of a compact item), the offending value
// and the reason. Parsers of options, labels and runtime rules turn it into a
// FieldError that names the key.
type ruleError struct {
	field  string
	value  string
	reason string
	err    error
}

func (e *ruleError) Error() string {
	if e.field != "" {
		return fmt.Sprintf("%s: %q: %s", e.field, e.value, e.reason)
	}
	return fmt.Sprintf("%q: %s", e.value, e.reason)
}

func (e *ruleError) Unwrap() error { return e.err }

func ruleErrf(field, value, format string, args ...any) *ruleError {
	return &ruleError{field: field, value: value, reason: fmt.Sprintf(format, args...)}
}

// fieldError turns err into a *FieldError for key. For a compact item the
// whole item is the value (users find it in their list); for a full rule a
// *ruleError keeps its sub-field and value. Any other error becomes the
// reason.
func fieldError(key, item string, compact bool, err error) *FieldError {
	var re *ruleError
	if !errors.As(err, &re) {
		return &FieldError{Field: key, Value: item, Reason: err.Error(), Err: err}
	}
	fe := &FieldError{Field: key, Value: re.value, Reason: re.reason, Err: re.err}
	switch {
	case compact:
		fe.Value = item
	case re.field != "":
		fe.Field = key + "." + re.field
	}
	return fe
}

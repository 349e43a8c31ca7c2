"""Per-form feeds into the one Mailchimp audience: the audience's shape (schema), the check
of every form against it (check), what a signup adds to its member write (member), and the
values intake refuses before Mailchimp would (values)."""

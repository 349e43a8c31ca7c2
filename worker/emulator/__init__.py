"""A stateful stand-in for the Mailchimp Marketing API, with fault injection and real webhooks."""

"""The signup path: the message and its validation (message), storing it with its outbox
job (store), and the outbox flush to Mailchimp (flush)."""

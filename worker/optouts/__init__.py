"""Opt-outs come home: the Mailchimp webhook inbox, event application and reconciliation."""

"""Customers, plans, subscriptions, invoices, payments and disputes."""

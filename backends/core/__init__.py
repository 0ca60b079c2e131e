"""Core: settings, errors, the shared result types, text utilities and threads. Imports nothing else of Duet."""

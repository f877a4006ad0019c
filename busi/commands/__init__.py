"""The console scripts: parse options, call the library, print. Nothing else lives here."""

from cefmp4.cli import entry

entry()

"""Test-only hooks for `mailman shell -r` (PYTHONPATH=tests/support)."""

from mailman.interfaces.listmanager import IListManager
from zope.component import getUtility


def forget_list(mlist):
    # Deletes the list from Mailman's database only. Unlike `mailman remove`, this leaves
    # Postfix's maps alone, so Postfix still routes the list to Mailman and Mailman's LMTP
    # answers 550: the way to make Mailman refuse a post that listcrypt decrypted.
    getUtility(IListManager).delete(mlist)

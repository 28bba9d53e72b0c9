"""Mailman 3 settings for a list that listcrypt encrypts.

Run once per list, as the Mailman user (`list` on Debian). The package installs this file
in /usr/share/listcrypt:

    sudo -u list env PYTHONPATH=/usr/share/listcrypt \\
        mailman shell -l enc@lists.example.org -r listcrypt_mailman.encrypted_list

Mailman commits the changes when the function returns. Running it again changes nothing.
The end-to-end test applies its list settings with this very function.
"""

from mailman.interfaces.archiver import ArchivePolicy
from mailman.interfaces.mailinglist import IHeaderMatchList, IListArchiverSet
from mailman.interfaces.template import ITemplateManager
from zope.component import getUtility

# listcrypt marks posts that its policy says to hold with this header (value: the reason).
HOLD_HEADER = 'X-Listcrypt-Hold'

# Decorations Mailman would add to posts and digests. A list-wide template in Mailman's
# database beats every file-system template in every language, so /dev/null silences them.
EMPTY_TEMPLATES = (
    'list:member:regular:header',
    'list:member:regular:footer',
    'list:member:digest:header',
    'list:member:digest:footer',
)


def encrypted_list(mlist):
    # Encrypted posts are several times larger than their text; 0 = no limit. listcrypt
    # enforces its own limits before it decrypts anything.
    mlist.max_message_size = 0
    # Content filtering rewrites MIME parts and breaks the author's signature.
    mlist.filter_content = False
    # Mailman's archives would keep the decrypted posts in clear.
    mlist.archive_policy = ArchivePolicy.never
    for archiver in IListArchiverSet(mlist).archivers:
        archiver.is_enabled = False
    templates = getUtility(ITemplateManager)
    for name in EMPTY_TEMPLATES:
        templates.set(name, mlist.list_id, 'file:///dev/null')
    # Hold what listcrypt marks. The rule runs after member moderation, so it only holds
    # posts of members whose moderation action is the default (defer).
    rules = IHeaderMatchList(mlist)
    if not any(rule.header == HOLD_HEADER.lower() for rule in rules):
        rules.append(HOLD_HEADER, '.+', 'hold')

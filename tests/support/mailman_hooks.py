"""Test-only hooks for `mailman shell -r` (PYTHONPATH=tests/support)."""

from mailman.interfaces.listmanager import IListManager
from zope.component import getUtility


def forget_list(mlist):
    # Deletes the list from Mailman's database only. Unlike `mailman remove`, this leaves
    # Postfix's maps alone, so Postfix still routes the list to Mailman and Mailman's LMTP
    # answers 550: the way to make Mailman refuse a post that listcrypt decrypted.
    getUtility(IListManager).delete(mlist)


def set_delivery_mode(mlist, email, mode):
    # mode: a DeliveryMode name (regular, plaintext_digests, mime_digests, summary_digests).
    from mailman.interfaces.member import DeliveryMode
    member = mlist.members.get_member(email)
    if member is None:
        raise SystemExit('{} is not a member of {}'.format(email, mlist.fqdn_listname))
    member.preferences.delivery_mode = DeliveryMode[mode]
    print('{} {}'.format(email, member.delivery_mode.name))


def held_messages(mlist):
    # One line per held post: request id, sender and subject.
    from mailman.interfaces.requests import IListRequests, RequestType
    requests = IListRequests(mlist)
    for request in requests.of_type(RequestType.held_message):
        key, data = requests.get_request(request.id)
        print('{} {} {!r}: {}'.format(request.id, data.get('_mod_sender'),
                                      data.get('_mod_subject'), data.get('_mod_reason')))


def reject_held(mlist, reason):
    # Rejects every held post, as a moderator would: Mailman sends the poster a notice.
    from mailman.app.moderator import handle_message
    from mailman.interfaces.action import Action
    from mailman.interfaces.requests import IListRequests, RequestType
    requests = IListRequests(mlist)
    for request in list(requests.of_type(RequestType.held_message)):
        handle_message(mlist, request.id, Action.reject, reason)
        print('rejected {}'.format(request.id))


def bounce_events(mlist):
    # One line per bounce event Mailman recorded for this list: address and context.
    from mailman.interfaces.bounce import IBounceProcessor
    for event in getUtility(IBounceProcessor).events:
        if event.list_id == mlist.list_id:
            print('{} {}'.format(event.email, event.context.name))


def set_moderation_action(mlist, email, action):
    # action: an Action name (hold, reject, discard, accept, defer) for the member's posts.
    from mailman.interfaces.action import Action
    member = mlist.members.get_member(email)
    if member is None:
        raise SystemExit('{} is not a member of {}'.format(email, mlist.fqdn_listname))
    member.moderation_action = Action[action]
    print('{} {}'.format(email, member.moderation_action.name))


def warm_template_cache(mlist):
    # Mailman's template cache (mailman/model/cache.py) has no unique key: two runners that
    # fetch an uncached template at once both add a row, and every later lookup of it fails
    # with "Multiple rows were found" and shunts the message. Fetch each template of the
    # list once, before the runners start.
    from mailman.interfaces.template import ITemplateManager
    manager = getUtility(ITemplateManager)
    names = ('list:member:regular:header', 'list:member:regular:footer',
             'list:member:digest:header', 'list:member:digest:footer')
    for name in names:
        manager.get(name, mlist.list_id)
    print('warmed {} templates of {}'.format(len(names), mlist.list_id))

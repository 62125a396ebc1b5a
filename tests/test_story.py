"""Story mode: parsing timed segments and one-line errors naming the bad segment."""

import pytest

from musiclm_jax.sampling import story


def test_parse_story_and_segment_lookup():
  segs = story.parse_story('calm meditation (0:00-0:15), uplifting wake-up theme (0:15-0:30),'
                           ' lo-fi (beats) outro (30-45.5s)')
  assert [s.text for s in segs] == ['calm meditation', 'uplifting wake-up theme',
                                    'lo-fi (beats) outro']
  assert [(s.start, s.end) for s in segs] == [(0, 15), (15, 30), (30, 45.5)]
  assert [story.segment_at(segs, t) for t in (0, 14.9, 15, 29.99, 30, 50)] == [0, 0, 1, 1, 2, 2]
  assert story.parse_time('1:02:03') == 3723
  assert story.parse_time(' 2:30 ') == 150
  assert story.format_time(75) == '1:15'
  assert story.format_time(7.5) == '0:07.5'


def test_json_segments():
  segs = story.segments_from_json([{'text': 'a', 'start': 0, 'end': '0:10'},
                                   {'text': 'b', 'start': '0:10', 'end': 20}])
  assert [(s.text, s.start, s.end) for s in segs] == [('a', 0, 10), ('b', 10, 20)]


@pytest.mark.parametrize('text, fragment', [
    ('a (0:00-0:15), b (0:10-0:30)', "story segment 2 ('b'): overlaps segment 1"),
    ('a (0:00-0:15), b (0:20-0:30)', "story segment 2 ('b'): gap after segment 1"),
    ('a (0:15-0:30), b (0:00-0:15)', "story segment 1 ('a'): the story must start at 0:00"),
    ('a (0:00-0:15), b (0:30-0:45), c (0:15-0:30)', "story segment 2 ('b'): gap"),
    ('a (0:00-0:15), b (0:15-0:30), c (0:05-0:40)', "story segment 3 ('c'): out of order"),
    ('a (0:00-0:00)', "story segment 1 ('a'): non-positive length"),
    ('a (0:00-0:10), b (0:10-0:05)', "story segment 2 ('b'): non-positive length"),
    ('a (0:00-0:10), b', "story segment 2 ('b'): no (start-end) timing"),
    ('(0:00-0:10)', 'story segment 1: empty text'),
    ('a (0:00-1:75)', "story segment 1 ('a'): end: seconds field"),
    ('', 'story: empty'),
])
def test_story_errors_name_the_segment(text, fragment):
  with pytest.raises(story.StoryError) as e:
    story.parse_story(text)
  message = str(e.value)
  assert fragment in message
  assert '\n' not in message


@pytest.mark.parametrize('items, fragment', [
    ([{'text': 'a', 'start': -1, 'end': 5}], "story segment 1 ('a'): negative start"),
    ([{'text': 'a', 'start': 0}], "story segment 1 ('a'): missing end"),
    ([{'text': 'a', 'start': 0, 'end': 'soon'}], "story segment 1 ('a'): end: cannot read time"),
    (['a'], 'story segment 1: expected an object'),
    ([], 'story: expected a non-empty list'),
])
def test_json_story_errors(items, fragment):
  with pytest.raises(story.StoryError) as e:
    story.segments_from_json(items)
  assert fragment in str(e.value)


def test_validate_limit():
  segs = [story.StorySegment('a', 0, 200), story.StorySegment('b', 200, 400)]
  with pytest.raises(story.StoryError, match=r"story segment 2 \('b'\): ends at 6:40, beyond"):
    story.validate(segs, max_duration=300)

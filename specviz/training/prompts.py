"""The project's own training prompts: original templates x topics, in seven categories.

Input-grounded tasks (edit this code, summarise this passage, answer from this context) get the
largest shares: there a drafter can learn to copy from its input, which is where speculation
pays most. Nothing here is taken from the evaluation suite (assets/prompts.jsonl); the test
suite checks that no training prompt shares a passage, snippet or sentence with it.

`training_prompts(count, seed)` returns a deterministic, category-balanced, shuffled selection.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

# Share of each category in a selection (input-grounded categories first).
CATEGORY_SHARES = {
    "code_edit": 0.20,
    "rag": 0.20,
    "summarization": 0.17,
    "code": 0.13,
    "chat": 0.12,
    "math": 0.10,
    "translation": 0.08,
}


@dataclass(frozen=True)
class TrainingPrompt:
    id: str  # "<category>-<index within the category's candidates>"
    category: str
    text: str


# --------------------------------------------------------------------------- chat

EXPLAIN_TOPICS = [
    "how a refrigerator keeps food cold",
    "why bread rises when it bakes",
    "how vaccines train the immune system",
    "why the moon has phases",
    "how a bicycle stays upright while moving",
    "what inflation means for everyday shopping",
    "how solar panels turn light into electricity",
    "why leaves change colour in autumn",
    "how a compass finds north",
    "what a credit score is",
    "how noise-cancelling headphones work",
    "why we have leap years",
    "how bees make honey",
    "what compound interest is",
    "how a hash table stores data",
    "why ice floats on water",
    "how earthquakes happen",
    "what a neural network learns",
    "how a microwave oven heats food",
    "why cats purr",
    "how GPS knows where you are",
    "what photosynthesis does for a plant",
    "how a password manager protects accounts",
    "why the ocean is salty",
    "how an electric car battery is charged",
    "what a budget spreadsheet is for",
    "how tides are caused",
    "why some people need glasses",
    "how a search engine ranks pages",
    "what version control is used for",
]

TIPS_TOPICS = [
    "learning a new language as an adult",
    "keeping houseplants alive",
    "writing a clear email to a colleague",
    "saving money on groceries",
    "preparing for a job interview",
    "sleeping better during a heatwave",
    "starting to run as a beginner",
    "organising a small kitchen",
    "studying for an exam in one week",
    "giving a short presentation without notes",
    "cooking rice that is not sticky",
    "reducing screen time in the evening",
    "travelling with only a carry-on bag",
    "making a long car journey pleasant for children",
    "taking better photos with a phone",
    "keeping a notebook of ideas",
    "welcoming a new cat into the home",
    "planning a birthday party on a small budget",
]

COMPARISONS = [
    ("a virus", "a bacterium"),
    ("weather", "climate"),
    ("a list", "a tuple in Python"),
    ("RAM", "disk storage"),
    ("a debit card", "a credit card"),
    ("baking soda", "baking powder"),
    ("a lake", "a pond"),
    ("an alligator", "a crocodile"),
    ("HTTP", "HTTPS"),
    ("a simile", "a metaphor"),
    ("a comet", "an asteroid"),
    ("renting", "buying a home"),
]

CHAT_EXPLAIN_TEMPLATES = [
    "Explain {topic} to a ten-year-old.",
    "Can you describe {topic} in a short paragraph?",
    "I have always wondered about {topic}. Please explain it briefly.",
]
CHAT_TIPS_TEMPLATES = [
    "Give me three practical tips for {topic}.",
    "What are some good habits for {topic}? Keep the list short.",
]
CHAT_COMPARE_TEMPLATES = [
    "What is the difference between {a} and {b}?",
    "Compare {a} and {b} in a few sentences.",
]


def _chat() -> list[str]:
    out = [t.format(topic=topic) for topic in EXPLAIN_TOPICS for t in CHAT_EXPLAIN_TEMPLATES]
    out += [t.format(topic=topic) for topic in TIPS_TOPICS for t in CHAT_TIPS_TEMPLATES]
    out += [t.format(a=a, b=b) for a, b in COMPARISONS for t in CHAT_COMPARE_TEMPLATES]
    return out


# --------------------------------------------------------------------------- code writing

CODE_TASKS = [
    "`count_vowels(text)` that returns how many vowels a string contains",
    "`fizzbuzz(n)` that returns the FizzBuzz strings from 1 to n as a list",
    "`flatten(nested)` that flattens a list of lists by one level",
    "`word_frequencies(text)` that returns a dict mapping each lower-cased word to its count",
    "`is_prime(n)` that checks whether an integer is prime",
    "`celsius_to_fahrenheit(c)` and its inverse `fahrenheit_to_celsius(f)`",
    "`second_largest(numbers)` that returns the second largest distinct value",
    "`remove_duplicates(items)` that keeps the first occurrence of each item in order",
    "`transpose(matrix)` for a matrix given as a list of rows",
    "`caesar_shift(text, shift)` that shifts letters and leaves other characters alone",
    "`running_total(values)` that returns the cumulative sums of a list",
    "`parse_key_values(line)` that turns 'a=1;b=2' into a dict",
    "`binary_search(sorted_items, target)` that returns the index or -1",
    "`gcd(a, b)` using Euclid's algorithm",
    "`title_case(sentence)` that capitalises the first letter of every word",
    "`read_numbers(path)` that reads one float per line from a text file",
    "`dict_invert(mapping)` that swaps keys and values",
    "`rotate_left(items, k)` that rotates a list k places to the left",
    "`count_words_in_file(path)` that returns the number of words in a text file",
    "`clamp(value, low, high)` that limits a number to a range",
    "`moving_average(values, window)` that returns the averages of each window",
    "`group_by_length(words)` that groups words into a dict keyed by length",
    "`digits_sum(n)` that adds up the decimal digits of a non-negative integer",
    "`is_anagram(a, b)` that ignores case and spaces",
    "`factorial(n)` both recursively and with a loop",
    "`longest_word(sentence)` that returns the longest word of a sentence",
    "`mask_email(address)` that hides all but the first letter of the name part",
    "`histogram(values)` that prints one row of stars per value",
]

CODE_TEMPLATES = [
    "Write a Python function {task}.",
    "Implement {task} in Python and show one example call.",
]


def _code() -> list[str]:
    return [t.format(task=task) for task in CODE_TASKS for t in CODE_TEMPLATES]


# --------------------------------------------------------------------------- code editing

# (snippet, function name, a better name)
SNIPPETS = [
    (
        "def total_price(items):\n"
        "    total = 0\n"
        "    for item in items:\n"
        "        total = total + item['price'] * item['qty']\n"
        "    return total\n",
        "total_price", "order_total",
    ),
    (
        "def find_max(nums):\n"
        "    best = nums[0]\n"
        "    for n in nums:\n"
        "        if n > best:\n"
        "            best = n\n"
        "    return best\n",
        "find_max", "largest",
    ),
    (
        "def squares(limit):\n"
        "    out = []\n"
        "    for i in range(limit):\n"
        "        out.append(i * i)\n"
        "    return out\n",
        "squares", "square_numbers",
    ),
    (
        "def load_names(path):\n"
        "    f = open(path)\n"
        "    names = f.read().splitlines()\n"
        "    f.close()\n"
        "    return names\n",
        "load_names", "read_names",
    ),
    (
        "def describe(person):\n"
        "    return person['name'] + ' is ' + str(person['age']) + ' years old'\n",
        "describe", "person_summary",
    ),
    (
        "def evens(values):\n"
        "    result = []\n"
        "    for v in values:\n"
        "        if v % 2 == 0:\n"
        "            result.append(v)\n"
        "    return result\n",
        "evens", "even_values",
    ),
    (
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.n = 0\n"
        "\n"
        "    def inc(self):\n"
        "        self.n += 1\n"
        "        return self.n\n",
        "inc", "increment",
    ),
    (
        "def grade(score):\n"
        "    if score >= 90:\n"
        "        return 'A'\n"
        "    if score >= 75:\n"
        "        return 'B'\n"
        "    if score >= 50:\n"
        "        return 'C'\n"
        "    return 'F'\n",
        "grade", "letter_grade",
    ),
    (
        "def merge_dicts(a, b):\n"
        "    result = {}\n"
        "    for key in a:\n"
        "        result[key] = a[key]\n"
        "    for key in b:\n"
        "        result[key] = b[key]\n"
        "    return result\n",
        "merge_dicts", "combine",
    ),
    (
        "def count_lines(path):\n"
        "    n = 0\n"
        "    with open(path) as handle:\n"
        "        for line in handle:\n"
        "            n += 1\n"
        "    return n\n",
        "count_lines", "line_count",
    ),
    (
        "def initials(full_name):\n"
        "    parts = full_name.split()\n"
        "    letters = ''\n"
        "    for p in parts:\n"
        "        letters += p[0].upper()\n"
        "    return letters\n",
        "initials", "name_initials",
    ),
    (
        "def avg_temp(readings):\n"
        "    s = 0\n"
        "    for r in readings:\n"
        "        s += r\n"
        "    return s / len(readings)\n",
        "avg_temp", "mean_temperature",
    ),
    (
        "function double(list) {\n"
        "  var out = [];\n"
        "  for (var i = 0; i < list.length; i++) {\n"
        "    out.push(list[i] * 2);\n"
        "  }\n"
        "  return out;\n"
        "}\n",
        "double", "doubled",
    ),
    (
        "def shout(words):\n"
        "    text = ''\n"
        "    for w in words:\n"
        "        text = text + w.upper() + ' '\n"
        "    return text.strip()\n",
        "shout", "to_upper_sentence",
    ),
    (
        "def discount(price, percent):\n"
        "    cut = price * percent / 100\n"
        "    new_price = price - cut\n"
        "    return round(new_price, 2)\n",
        "discount", "apply_discount",
    ),
    (
        "def positions(text, ch):\n"
        "    found = []\n"
        "    i = 0\n"
        "    while i < len(text):\n"
        "        if text[i] == ch:\n"
        "            found.append(i)\n"
        "        i += 1\n"
        "    return found\n",
        "positions", "char_positions",
    ),
]

CODE_EDIT_TEMPLATES = [
    "Add a docstring to this code and return the whole code.\n\n{code}",
    "Rename `{name}` to `{new_name}` everywhere in this code. Return the complete code.\n\n{code}",
    "Add Python type annotations to this code and show the full result.\n\n{code}",
    "Add short comments that explain each step of this code. Return all of it.\n\n{code}",
    "Make this code more readable without changing what it does, and return the complete code.\n\n{code}",
    "Find any bug or edge case in this code, fix it, and return the corrected version.\n\n{code}",
]


def _code_edit() -> list[str]:
    return [t.format(code=code, name=name, new_name=new) for code, name, new in SNIPPETS for t in CODE_EDIT_TEMPLATES]


# --------------------------------------------------------------------------- passages (summaries, QA)

# (passage, two questions answerable from it)
PASSAGES = [
    (
        "The village of Brackenholt sits at the end of a narrow valley. Until 1958 the only way in was a "
        "gravel track that flooded every spring, so the school, the bakery and the post office all kept "
        "two weeks of supplies in their cellars. When the new bridge opened, the bus to the market town "
        "began running twice a day, and within ten years half of the young families had moved closer to "
        "the factories downstream.",
        ["Why did the shops keep supplies in their cellars?", "How often did the bus run after the bridge opened?"],
    ),
    (
        "Sea otters wrap themselves in strands of kelp before they sleep so that the current does not "
        "carry them away. They have the densest fur of any animal, up to a million hairs per square "
        "inch, which traps air and keeps them warm without a layer of fat. An adult eats about a quarter "
        "of its body weight every day, mostly sea urchins, crabs and clams.",
        ["Why do sea otters wrap themselves in kelp?", "How much does an adult sea otter eat each day?"],
    ),
    (
        "The Halden Public Pool reopens on 3 June after a six-month renovation. The main basin now has "
        "six lanes instead of five, and a separate warm pool for children under eight has been added. "
        "Opening hours are 7:00 to 21:00 on weekdays and 9:00 to 18:00 at weekends. A single ticket "
        "costs 4 euros; a card for ten visits costs 32 euros.",
        ["How many lanes does the main basin have now?", "What does a card for ten visits cost?"],
    ),
    (
        "Our support team answers messages from Monday to Friday between 8:00 and 18:00. Requests sent "
        "on a weekend are answered on the next working day. If your order arrived damaged, send a photo "
        "of the parcel within 14 days and we will ship a replacement at no cost. Refunds are paid back to "
        "the original payment method within five working days.",
        ["What should a customer do if the order arrived damaged?", "How long do refunds take?"],
    ),
    (
        "Quinoa is the seed of a plant related to spinach, not a true grain. It was first grown in the "
        "Andes about seven thousand years ago. The seeds are covered in a bitter coating called saponin, "
        "which is why quinoa should be rinsed before cooking. Cooked quinoa contains all nine essential "
        "amino acids, which is unusual for a plant food.",
        ["Why should quinoa be rinsed before cooking?", "Where was quinoa first grown?"],
    ),
    (
        "At Tuesday's meeting the garden committee decided to replace the broken shed before the summer. "
        "Priya collected three quotes; the cheapest, from a local carpenter, is 640 pounds and includes "
        "a new lock. Sam will ask the council whether a permit is needed. Volunteers are needed on 12 May "
        "to empty the old shed, and the next meeting will be on 20 May.",
        ["How much is the cheapest quote and who offered it?", "What will Sam do?"],
    ),
    (
        "The Vexa X2 electric scooter has a range of 35 kilometres and a top speed of 25 km/h. Its battery "
        "charges fully in five hours from a normal socket. The scooter weighs 14 kilograms and folds in "
        "three seconds, so it fits in the boot of a small car. The manufacturer gives a two-year warranty "
        "on the frame and one year on the battery.",
        ["How long does the battery take to charge?", "How long is the warranty on the battery?"],
    ),
    (
        "Glass is made by melting sand, soda ash and limestone at about 1,500 degrees Celsius. The soda "
        "ash lowers the melting point of the sand, and the limestone makes the finished glass resistant "
        "to water. Recycled glass, called cullet, melts at a lower temperature than the raw materials, "
        "so adding it saves energy and reduces wear on the furnace.",
        ["What does the soda ash do?", "Why does adding recycled glass save energy?"],
    ),
    (
        "The Dunmore Chess Club was founded in 1923 by two schoolteachers who met on a train. It started "
        "with eight members playing in the back room of a tea shop. Today the club has over a hundred "
        "members, runs a junior league for players under sixteen, and hosts an open tournament every "
        "October that attracts players from across the region.",
        ["Who founded the club and when?", "When is the open tournament held?"],
    ),
    (
        "Tardigrades are animals less than a millimetre long that live in moss, soil and sea sediment. "
        "When their surroundings dry out, they pull in their legs, lose almost all the water in their "
        "bodies and enter a state called cryptobiosis. In this state they can survive freezing, boiling "
        "and even the vacuum of space, and revive within hours once they are wet again.",
        ["What do tardigrades do when their surroundings dry out?", "Where do tardigrades live?"],
    ),
    (
        "To renew a library card, bring a photo identity document and a proof of address dated within "
        "the last three months. Cards for adults are valid for two years and cost nothing to renew. "
        "Lost cards are replaced for a fee of 3 euros. Members can borrow up to twelve items at a time, "
        "and loans last three weeks, with two online renewals allowed.",
        ["What documents are needed to renew a card?", "How many items can a member borrow at once?"],
    ),
    (
        "The Perrin Valley railway was built in 1889 to carry slate from the quarries to the coast. The "
        "line climbed 300 metres in eleven kilometres, so the engines pushed the empty wagons uphill and "
        "the full wagons rolled down by gravity, controlled by brakemen. The quarries closed in 1961, and "
        "volunteers reopened the line for tourist trains in 1975.",
        ["What did the railway carry when it was built?", "When did the line reopen and for whom?"],
    ),
    (
        "Sourdough bread rises thanks to a starter, a mixture of flour and water in which wild yeast and "
        "lactic acid bacteria live together. The yeast produces the gas that makes the dough rise, while "
        "the bacteria produce acids that give the bread its tangy taste and help it keep for longer. A "
        "starter must be fed with fresh flour and water regularly to stay active.",
        ["What makes sourdough taste tangy?", "How is a starter kept active?"],
    ),
    (
        "The city's new recycling rules start on 1 September. Paper and cardboard go in the blue bin, "
        "which is emptied every two weeks. Glass bottles and jars must be taken to the collection points "
        "near supermarkets. Food waste goes in the small brown caddy, collected every week, and garden "
        "waste can be taken to the depot on Mill Lane free of charge.",
        ["How often is the blue bin emptied?", "Where should glass bottles go?"],
    ),
    (
        "Mira worked as a nurse for twelve years before she opened a bicycle repair shop. She learned to "
        "fix wheels and gears from evening classes and from videos, and she started by repairing bikes "
        "for neighbours in her garage. Her shop now employs four mechanics and runs free repair "
        "workshops for teenagers every Saturday morning.",
        ["What did Mira do before she opened the shop?", "What does the shop offer teenagers?"],
    ),
    (
        "Lighthouses once used oil lamps and large glass lenses to send their beams up to forty "
        "kilometres out to sea. Keepers lived at the lighthouse, trimmed the wicks every few hours and "
        "wound the clockwork that turned the lens. Most lighthouses were automated in the second half "
        "of the twentieth century and now run on electric lamps monitored from a central office.",
        ["How far could the beams reach?", "What did the keepers do?"],
    ),
    (
        "The product team has finished the first version of the booking app. Users can reserve a table, "
        "choose a time in fifteen-minute steps and receive a reminder one hour before. Payments are not "
        "included yet and will come in version two. Testing with fifty customers is planned for the first "
        "week of next month, and Jonas is writing the feedback survey.",
        ["What can users do in the first version?", "Who is writing the feedback survey?"],
    ),
    (
        "Monarch butterflies travel up to 4,000 kilometres each autumn from Canada and the northern United "
        "States to forests in central Mexico. No single butterfly makes the round trip: the return "
        "journey in spring takes three to four generations. Scientists believe the butterflies navigate "
        "using the position of the sun and an internal clock in their antennae.",
        ["Where do the monarch butterflies spend the winter?", "How do they find their way?"],
    ),
    (
        "The Kestrel Theatre was built in 1910 as a music hall and later became a cinema. It closed in "
        "1988 and stood empty for twenty years until a group of local residents raised money to restore "
        "it. The reopened theatre seats 420 people and shows plays, concerts and films, and its cafe is "
        "run by a charity that trains young people for jobs in catering.",
        ["What was the building used for before it closed?", "How many people does the theatre seat?"],
    ),
    (
        "Rainwater harvesting means collecting the rain that falls on a roof and storing it for later use. "
        "A simple system has gutters, a filter to remove leaves and a tank. The stored water is good for "
        "watering gardens, washing cars and flushing toilets, but it must be treated before people drink "
        "it. A roof of 100 square metres can collect about 60,000 litres in a rainy year.",
        ["What are the parts of a simple system?", "Can people drink the stored water straight away?"],
    ),
    (
        "Employees can work from home up to two days a week after their first three months. Home working "
        "days must be agreed with the team leader a week in advance and entered in the shared calendar. "
        "The company pays 20 euros a month towards internet costs for anyone who works from home at "
        "least four days a month. Team meetings on Wednesdays are always held in the office.",
        ["When can new employees start working from home?", "Which meetings are always in the office?"],
    ),
    (
        "Honeybees communicate the location of flowers with a movement called the waggle dance. The "
        "angle of the dance on the vertical comb shows the direction of the flowers relative to the sun, "
        "and the length of the waggle run shows the distance. Other bees follow the dancer, smell the "
        "nectar she carries and then fly out to find the same flowers.",
        ["What does the angle of the dance show?", "How do other bees learn the smell of the flowers?"],
    ),
    (
        "The Ashgrove marathon starts at 8:30 at the sports ground and ends in the old market square. "
        "Water stations are placed every five kilometres, and the course closes six hours after the "
        "start. Runners must collect their numbers on the day before the race at the town hall, between "
        "10:00 and 19:00, and show a booking confirmation.",
        ["Where does the marathon end?", "When and where do runners collect their numbers?"],
    ),
    (
        "Before the invention of the printing press, books in Europe were copied by hand, often by monks "
        "working in a room called a scriptorium. A single Bible could take a scribe more than a year. "
        "Around 1450 Johannes Gutenberg combined movable metal type, oil-based ink and a wooden press, "
        "and within fifty years millions of books had been printed across the continent.",
        ["How long could it take to copy a Bible by hand?", "What did Gutenberg combine?"],
    ),
]

SUMMARY_TEMPLATES = [
    "Summarise this passage in one sentence.\n\n{passage}",
    "Write a two-sentence summary of the text below.\n\n{passage}",
    "List the three most important points of this text as bullet points.\n\n{passage}",
    "Give this text a short title and then summarise it briefly.\n\n{passage}",
]

QA_TEMPLATES = [
    "Answer the question from the text only.\n\nText: {passage}\n\nQuestion: {question}",
    "Context: {passage}\n\nUsing only the context above, answer: {question}",
    "Here is a passage.\n\n{passage}\n\nBased on the passage, {question_lower}",
]


def _summaries() -> list[str]:
    return [t.format(passage=passage) for passage, _ in PASSAGES for t in SUMMARY_TEMPLATES]


def _qa() -> list[str]:
    out = []
    for passage, questions in PASSAGES:
        for i, question in enumerate(questions):
            # each question gets two of the three templates, alternating, so both stay varied
            for t in (QA_TEMPLATES[i % 3], QA_TEMPLATES[(i + 1) % 3]):
                out.append(t.format(passage=passage, question=question, question_lower=question[0].lower() + question[1:]))
    return out


# --------------------------------------------------------------------------- translation

SENTENCES = [
    "The bakery on the corner sells fresh rolls from six o'clock.",
    "Could you tell me where the nearest pharmacy is?",
    "We are planning a picnic by the river if it does not rain.",
    "My grandmother grows tomatoes and beans in her small garden.",
    "The meeting has been moved to Friday afternoon.",
    "I would like to book a table for four people at eight.",
    "The children are playing football in the park behind the school.",
    "This train stops at every station until the airport.",
    "She forgot her umbrella at the office yesterday.",
    "How much does a ticket to the museum cost?",
    "The soup needs a little more salt and some pepper.",
    "Our neighbours have adopted a small grey dog.",
    "The shop will be closed on Monday because of the holiday.",
    "He reads the newspaper every morning with a cup of coffee.",
    "Please send me the report before the end of the week.",
    "The mountains are covered with snow until April.",
    "I have lost my keys; have you seen them anywhere?",
    "The concert starts at half past seven in the town square.",
    "We need to buy milk, eggs and bread for breakfast.",
    "It is too cold to swim in the lake today.",
]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese"]
TRANSLATION_TEMPLATES = [
    "Translate this sentence into {language}: {sentence}",
    "How do you say this in {language}? \"{sentence}\"",
]


def _translations() -> list[str]:
    out = []
    for i, sentence in enumerate(SENTENCES):
        # every sentence into two languages, rotating, with both templates
        for j in range(2):
            language = LANGUAGES[(i + j) % len(LANGUAGES)]
            out.append(TRANSLATION_TEMPLATES[j].format(language=language, sentence=sentence))
    return out


# --------------------------------------------------------------------------- math word problems

MATH_TEMPLATES = [
    "A baker makes {a} loaves every morning and sells {b} of them. How many loaves are left after {c} days? Explain step by step.",
    "Tickets cost {a} dollars for adults and {b} dollars for children. What do {c} adults and {d} children pay in total? Show your working.",
    "A cyclist rides at {a} km per hour for {b} hours and then at {c} km per hour for {d} hours. How far does she ride altogether?",
    "A tank holds {a0} litres and is filled at {b} litres per minute. How many minutes does it take to fill an empty tank? Explain your answer.",
    "Sam has {a} marbles. He gives {b} to each of his {c} friends. How many marbles does he have left?",
    "A garden is {a} metres long and {b} metres wide. What is its area, and how much fencing is needed to go around it?",
    "A jacket costs {a0} euros and is reduced by {p} percent. What is the new price? Show each step.",
    "There are {a} pupils in a class and {b} of them walk to school. What fraction of the class walks, in simplest form?",
    "A recipe uses {a} grams of flour for {b} biscuits. How much flour is needed for {c} biscuits?",
    "Anna saves {a} pounds a week. How many weeks does she need to save {a0} pounds? Explain step by step.",
]


def _math(rng: random.Random) -> list[str]:
    out = []
    for template in MATH_TEMPLATES:
        for _ in range(4):  # four number draws per template
            a, b, c, d = rng.randint(12, 60), rng.randint(2, 11), rng.randint(2, 7), rng.randint(2, 9)
            numbers = {"a": a, "b": b, "c": c, "d": d, "a0": a * rng.randint(5, 20), "p": rng.choice([10, 15, 20, 25, 30])}
            out.append(template.format(**numbers))
    return out


# --------------------------------------------------------------------------- selection


def candidates(seed: int = 0) -> dict[str, list[str]]:
    """Every training prompt the templates can make, by category (math numbers drawn from `seed`)."""
    return {
        "code_edit": _code_edit(),
        "rag": _qa(),
        "summarization": _summaries(),
        "code": _code(),
        "chat": _chat(),
        "math": _math(random.Random(seed)),
        "translation": _translations(),
    }


def training_prompts(count: int, seed: int = 0) -> list[TrainingPrompt]:
    """A deterministic selection of `count` prompts, split between categories by CATEGORY_SHARES.

    Each category's candidates are shuffled with `seed` and the first ones taken; the selection is
    then shuffled as a whole, so any prefix of it mixes categories.
    """
    pool = candidates(seed)
    total = sum(len(v) for v in pool.values())
    if not 1 <= count <= total:
        raise ValueError(f"count must be between 1 and {total} (the number of candidate prompts), got {count}")
    rng = random.Random(seed)
    # 1. quotas by share; the remainder goes round the categories, largest fraction first
    raw = {cat: count * share for cat, share in CATEGORY_SHARES.items()}
    quota = {cat: min(int(raw[cat]), len(pool[cat])) for cat in CATEGORY_SHARES}
    for cat in itertools.cycle(sorted(CATEGORY_SHARES, key=lambda c: raw[c] - int(raw[c]), reverse=True)):
        if sum(quota.values()) == count:
            break
        if quota[cat] < len(pool[cat]):
            quota[cat] += 1
    # 2. shuffle each category's candidates (keeping their indices as ids) and take the quota
    chosen = []
    for cat in CATEGORY_SHARES:
        order = list(range(len(pool[cat])))
        rng.shuffle(order)
        chosen += [TrainingPrompt(f"{cat}-{i:03d}", cat, pool[cat][i]) for i in order[: quota[cat]]]
    # 3. mix the categories
    rng.shuffle(chosen)
    return chosen

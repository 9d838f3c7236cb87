#!/usr/bin/env python3
"""Prompts for the teacher's synthetic corpus (taper generate-data --chat --prompts FILE): every
(template, topic) pair of the lists below, in a seeded shuffle, one prompt per line. The topics
are everyday, school and general-knowledge subjects written for this file; none is taken from a
scored benchmark (ARC, HellaSwag, PIQA, WinoGrande, MMLU, WikiText).
usage: sdg_prompts.py OUT_FILE [--seed 0]
"""
import argparse
import random

TEMPLATES = [
    "Explain {t} to a curious high-school student.",
    "Write a short encyclopedia article about {t}.",
    "What are the most important facts everyone should know about {t}?",
    "Write a short story in which {t} plays a central role.",
    "Give step-by-step advice for someone who wants to learn about {t}.",
    "Describe the history of {t} in a few paragraphs.",
    "What are common misconceptions about {t}, and what is actually true?",
    "Write a friendly letter to a child explaining {t}.",
    "List the pros and cons of {t} and explain each one.",
    "Answer a beginner's question: how does {t} work?",
    "Write a dialogue between a teacher and a student about {t}.",
    "Summarize what scientists or historians have learned about {t}.",
    "Describe an ordinary day that involves {t}.",
    "Write five quiz questions about {t}, each with its answer and a short explanation.",
    "Compare {t} with something similar and explain the differences.",
    "Why does {t} matter in everyday life? Give concrete examples.",
]

TOPICS = """
photosynthesis; the water cycle; volcanoes; earthquakes; plate tectonics; the solar system; black holes;
the moon's phases; ocean tides; climate and weather; hurricanes; glaciers; deserts; rainforests; coral reefs;
honeybees; migration of birds; dinosaurs; evolution by natural selection; DNA and genes; the human heart;
the immune system; vaccines; sleep; nutrition and a balanced diet; exercise; the human brain; the senses;
bacteria and viruses; antibiotics; first aid; dental hygiene; electricity; magnets; light and color; sound;
gravity; friction; simple machines; energy conservation; solar power; wind turbines; batteries; recycling;
composting; clean drinking water; air pollution; endangered species; national parks; farming; bread baking;
cooking pasta; fermentation; coffee; tea; chocolate; spices; growing tomatoes; houseplants; keeping chickens;
dogs as pets; cats; horses; fishing; bicycles; cars and engines; electric cars; trains; airplanes; ships;
bridges; skyscrapers; roads and traffic; maps and navigation; the compass; clocks and timekeeping; calendars;
money and banking; saving money; budgeting; taxes; supply and demand; inflation; trade between countries;
small businesses; job interviews; writing a resume; teamwork; leadership; public speaking; time management;
studying for exams; learning a foreign language; reading habits; libraries; the printing press; writing systems;
the alphabet; poetry; fairy tales; theater; music theory; the piano; the guitar; orchestras; painting; sculpture;
photography; film making; video games; board games; chess; soccer; basketball; the Olympic Games; swimming;
running a marathon; hiking; camping; mountain climbing; gardening; architecture; ancient Egypt; ancient Rome;
ancient Greece; the Silk Road; the Middle Ages; castles; the Renaissance; the Industrial Revolution;
the invention of the telephone; the internet; computers; programming; algorithms; databases; passwords and
online safety; social media; smartphones; artificial intelligence; robots; space exploration; the first moon
landing; satellites; telescopes; microscopes; the periodic table; acids and bases; states of matter; rust;
plastics; glass making; paper making; cotton and textiles; fashion; shoes; weddings; birthdays; holidays
around the world; family traditions; friendship; kindness; honesty; conflict resolution; volunteering;
democracy; voting; courts and laws; human rights; city life; village life; moving to a new city; neighbors;
shopping for groceries; cleaning a house; fixing a leaky faucet; painting a room; building a bookshelf;
doing laundry; caring for a baby; raising teenagers; grandparents; retirement; healthy aging; mental health;
stress; meditation; laughter; emotions; memory; habits; motivation; curiosity; mathematics in daily life;
fractions; percentages; geometry; probability; statistics; measuring length and weight; the metric system;
weather forecasts; rainbows; snow; thunderstorms; rivers; lakes; islands; mountains; caves; forests; grasslands;
whales; sharks; octopuses; ants; spiders; butterflies; frogs; snakes; elephants; wolves; penguins; owls
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    topics = [t.strip() for t in TOPICS.replace("\n", " ").split(";") if t.strip()]
    if len(set(topics)) != len(topics):
        raise SystemExit("sdg_prompts.py: a topic is listed twice")
    prompts = [tp.format(t=t) for tp in TEMPLATES for t in topics]
    random.Random(a.seed).shuffle(prompts)
    with open(a.out, "w") as f:
        f.write("\n".join(prompts) + "\n")
    print("%d prompts (%d templates x %d topics) -> %s" % (len(prompts), len(TEMPLATES), len(topics), a.out))


if __name__ == "__main__":
    main()
